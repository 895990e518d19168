"""``fewseg demo|train|tune|evaluate|adapt|predict|export|serve|list|config``: parse arguments -> config -> engine.

Errors: one line, exit 2."""
from __future__ import annotations

import argparse
import json
import os
import sys

from fewseg import cli_args
from fewseg.errors import FewsegError, Interrupted

EXIT_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 130, 143  # 128 + SIGINT, 128 + SIGTERM


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``fewseg evaluate: error: argument --shots: ... (see --help)``, exit 2."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"{self.prog}: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


positive_int, count_int, seed_int = cli_args.positive_int, cli_args.count_int, cli_args.seed_int


def cmd_list(args) -> None:
    import fewseg
    from fewseg.losses import LOSSES
    from fewseg.recipes import recipe_names
    print("models:     ", ", ".join(fewseg.list_models()))
    print("algorithms: ", ", ".join(fewseg.list_algorithms()))
    print("datasets:   ", ", ".join(fewseg.list_datasets()))
    print("baselines:  ", ", ".join(fewseg.list_baselines()))
    print("losses:     ", ", ".join(LOSSES))
    print("recipes:    ", ", ".join(recipe_names()))


def cmd_config(args) -> None:
    import yaml

    from fewseg.config import config_reference, load_config, write_reference
    if args.write:
        print(f"{args.write}: {'updated' if write_reference(args.write) else 'already up to date'}")
    elif args.show:
        print(yaml.safe_dump(load_config(args.show, args.overrides).to_dict(), sort_keys=False), end="")
    else:
        print(config_reference())


def cmd_train(args) -> None:
    import os
    from pathlib import Path

    from fewseg.config import load_config
    from fewseg.distributed import close_process_group
    from fewseg.engine.trainer import Trainer, resume_trainer
    cli_args.check_train_args(args)
    resume = args.resume
    if not resume and args.config is not None:
        cfg = load_config(args.config, args.overrides)
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
        if (args.auto_resume or restarted) and (Path(cfg.output) / "checkpoints" / "last" / "meta.json").exists():
            resume = cfg.output  # an elastic restart (torchrun --max-restarts) continues from the last checkpoint
    if resume:
        trainer = resume_trainer(resume, args.overrides, progress=not args.no_progress)
        if trainer.group.is_main:
            print(f"resuming {resume} at iteration {trainer.iteration}")
    else:
        if args.config is None:
            raise FewsegError("fewseg train needs --config RECIPE (a YAML file or a shipped recipe's name; "
                              "`fewseg list` shows them) or --resume DIR")
        trainer = Trainer(cfg, progress=not args.no_progress)
    from fewseg.engine.session import describe_split
    main = trainer.group.is_main
    if main:
        if trainer.group.world > 1:
            print(f"torchrun: {trainer.group.world} ranks, {trainer.cfg.train.meta_batch} tasks per meta-batch "
                  "split across them")
        for split, ds in (("train", trainer.train_set), ("val", trainer.val_set)):
            print(describe_split(split, ds.describe()))
    try:
        result = trainer.fit()
    finally:
        close_process_group()
    if main:
        print(json.dumps({**result, "world_size": trainer.group.world}))
        best = trainer.out / "checkpoints" / "best"
        if trainer.cfg.eval.tune and (best / "meta.json").exists():
            from fewseg.engine.tuning import tune_checkpoint
            tune_checkpoint(best, device=trainer.cfg.device)


def cmd_tune(args) -> None:
    from fewseg.engine.tuning import tune_checkpoint
    tune_checkpoint(args.checkpoint, shots=args.shots, device=args.device)


def cmd_evaluate(args) -> None:
    from fewseg.engine.session import evaluate_checkpoint
    if args.explain:
        from fewseg.report.explain import explain_checkpoint
        explain_checkpoint(args.checkpoint, shots=args.shots, episodes=args.episodes, queries=args.queries,
                           seed=args.seed, output=args.output, device=args.device)
    evaluate_checkpoint(args.checkpoint, shots=args.shots, episodes=args.episodes, queries=args.queries,
                        steps=args.steps, seed=args.seed, baselines=args.baselines, dataset=args.dataset,
                        data_root=args.data_root, output=args.output, device=args.device, tile=args.tile,
                        overlap=args.overlap)


def cmd_demo(args) -> None:
    from fewseg.report.demo import run_demo
    run_demo(output=args.output, quick=args.quick, device=args.device, seed=args.seed)


def cmd_adapt(args) -> None:
    import warnings

    from fewseg.engine.session import adapt_folder
    cli_args.check_adapt_args(args)  # every argument, before any work
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *a, **k: print(f"fewseg: warning: {message}", file=sys.stderr)
        adapt_folder(args.checkpoint, args.support, args.images, args.output, steps=args.steps,
                     device=args.device, save_adapted=args.save_adapted, threshold=args.threshold,
                     masks=args.masks, progress=not args.no_progress, tile=args.tile, overlap=args.overlap)


def cmd_predict(args) -> None:
    from fewseg.engine.folders import predict_folder
    from fewseg.segmenter import load_adapted
    cli_args.check_predict_args(args)  # every argument, before any work
    from fewseg.tiling import tile_options
    adapted = load_adapted(args.adapted, args.device, **tile_options(args.tile, args.overlap))
    predict_folder(adapted, args.images, args.output, threshold=args.threshold, masks=args.masks,
                   progress=not args.no_progress)


def cmd_export(args) -> None:
    from fewseg.export import export
    from fewseg.segmenter import load_adapted
    out = export(load_adapted(args.adapted), args.output, args.format, batch=args.batch)
    print(f"exported {args.adapted} as {args.format} to {out} (input 'images' [N,C,S,S] in [0,1]; "
          f"preprocessing in {out}.json)")


def cmd_serve(args) -> None:
    from fewseg.webapp.server import serve
    serve(args.checkpoint, host=args.host, port=args.port, device=args.device, tile=args.tile,
          overlap=args.overlap)


def _segmenting_options(s: argparse.ArgumentParser, threshold_help: str) -> None:
    """The options shared by the commands that write masks (adapt, predict)."""
    s.add_argument("--threshold", type=float, default=None, help=threshold_help)
    s.add_argument("--recursive", action="store_true", help="with a folder in --images: its subfolders too")
    s.add_argument("--masks", help="folder of true masks <stem>.png: results.json gets each image's IoU")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--device", default="cpu")
    from fewseg.tiling import overlap_arg
    s.add_argument("--tile", type=count_int, default=None, metavar="PIXELS", help="large images at their own "
                   "resolution: windows of PIXELS x PIXELS of the image, blended (0: whole images; predict's "
                   "default: the adapted model's)")
    s.add_argument("--overlap", type=overlap_arg, default=None, help="of neighbouring windows with --tile: a "
                   "fraction of the tile below 1 (default 0.25) or whole pixels from 1 up")


def build_parser() -> argparse.ArgumentParser:
    from fewseg._version import __version__
    p = _Parser(prog="fewseg", description="Meta-learned few-shot image segmentation.")
    p.add_argument("--version", action="version", version=f"fewseg {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="registered models, algorithms, datasets, baselines, losses; shipped recipes")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("config", help="the config reference (every key), or a recipe's resolved YAML")
    s.add_argument("--show", metavar="RECIPE", help="print this recipe (file or shipped name) with every key resolved")
    s.add_argument("--write", metavar="FILE", help="fill FILE's config-reference block with the reference")
    s.add_argument("overrides", nargs="*", help="dotted overrides applied to --show, e.g. train.iterations=200")
    s.set_defaults(func=cmd_config)

    s = sub.add_parser("train", help="meta-train from a YAML recipe")
    s.add_argument("--config", metavar="RECIPE",
                   help="a YAML file or a shipped recipe's name, e.g. synthetic_maml (`fewseg list` shows them)")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from checkpoints/last")
    s.add_argument("--auto-resume", action="store_true",
                   help="with --config: continue the run in its output folder if it has a checkpoint (what an "
                        "elastic restart under torchrun --max-restarts does by itself)")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.iterations=200")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("tune", help="choose test-time steps, rate, views and leave-one-out per shot count on "
                                    "validation classes and store them in the checkpoint")
    s.add_argument("--checkpoint", required=True, help="a run directory (its checkpoints/best) or a checkpoint")
    s.add_argument("--shots", type=positive_int, nargs="+", default=None, help="default: the run's eval.shots")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_tune)

    s = sub.add_parser("evaluate", help="few-shot evaluation on test classes, beside baselines")
    s.add_argument("--checkpoint", required=True, help="a run directory or a checkpoint directory")
    s.add_argument("--shots", type=positive_int, nargs="+", default=None, help="default: the run's eval.shots")
    s.add_argument("--episodes", type=positive_int, default=None,
                   help="per shot count; default: the run's eval.episodes")
    s.add_argument("--queries", type=positive_int, default=None, help="per episode; default: the run's eval.queries")
    s.add_argument("--steps", type=count_int, default=None,
                   help="inner steps at test time for every method (default: the checkpoint's plans, else eval_steps)")
    s.add_argument("--seed", type=seed_int, default=0)
    s.add_argument("--baselines", nargs="*", default=None,
                   help="baselines to run (no names: all of them); omit the flag for none")
    s.add_argument("--dataset", default=None, help="evaluate on another dataset (cross-dataset)")
    s.add_argument("--data-root", default=None)
    s.add_argument("--output", default=None, help="JSON results file (default: beside the checkpoint)")
    s.add_argument("--explain", action="store_true", help="task-attention: mean attention of each test class over "
                   "the memory slots and the training classes sharing them (explain.json, explain.png)")
    s.add_argument("--device", default="cpu")
    from fewseg.tiling import overlap_arg
    s.add_argument("--tile", type=count_int, default=None, metavar="PIXELS", help="large images at their own "
                   "resolution: adapt on PIXELS x PIXELS patches of the support images, predict each query window "
                   "by window, score at the label maps' size (0: whole images; default: the run's eval.tile)")
    s.add_argument("--overlap", type=overlap_arg, default=None, help="of neighbouring windows with --tile: a "
                   "fraction of the tile below 1 or whole pixels from 1 up (default: the run's eval.overlap, 0.25)")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("demo", help="meta-train on the embedded synthetic set, evaluate vs baselines, report")
    s.add_argument("--quick", action="store_true", help="a sub-minute smoke run")
    s.add_argument("--output", default="runs/demo")
    s.add_argument("--device", default="cpu")
    s.add_argument("--seed", type=seed_int, default=0, help="the recipe's seed (initialisation and episodes)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("adapt", help="adapt to a folder of labelled images and segment new images")
    s.add_argument("--checkpoint", required=True, help="a run directory, a checkpoint directory, or a ready "
                   "learner that needs no meta-training: imagenet-lite0, imagenet-lite1, imagenet-lite2")
    s.add_argument("--support", required=True, help="folder of images with masks <stem>.png (or masks/ subfolder)")
    s.add_argument("--images", nargs="+", metavar="IMAGES", help="images to segment (with --output): files, "
                   "folders or glob patterns such as 'photos/*.jpg' (--recursive: subfolders too)")
    s.add_argument("--output", help="where masks, overlays and results.json are written")
    s.add_argument("--save-adapted", metavar="PATH", help="keep the adapted model in PATH for `fewseg predict`")
    s.add_argument("--steps", type=count_int, default=None)
    _segmenting_options(s, "foreground above this probability (default: the run's eval.threshold)")
    s.set_defaults(func=cmd_adapt)

    s = sub.add_parser("predict", help="segment a folder with an adapted model (fewseg adapt --save-adapted)")
    s.add_argument("--adapted", required=True, help="an adapted model directory")
    s.add_argument("--images", required=True, nargs="+", metavar="IMAGES", help="images to segment, of any size: "
                   "files, folders or glob patterns such as 'photos/*.jpg' (--recursive: subfolders too)")
    s.add_argument("--output", required=True, help="where masks, overlays and results.json are written")
    _segmenting_options(s, "default: the adapted model's")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("export", help="export an adapted model to ONNX or TorchScript")
    s.add_argument("--adapted", required=True, help="an adapted model directory")
    s.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    s.add_argument("--output", required=True, help="the file to write (.onnx or .pt)")
    s.add_argument("--batch", type=positive_int, default=2, help="batch size of the example input (the batch "
                   "dimension stays dynamic)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("serve", help="a local web page: upload or draw support masks, adapt, see overlays")
    s.add_argument("--checkpoint", default="imagenet-lite0", help="a run directory, a checkpoint directory or a "
                   "ready learner (default: imagenet-lite0, frozen ImageNet features + a linear probe; no "
                   "meta-training needed)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=cli_args.port_arg, default=7860, help="0-65535 (0: any free port)")
    s.add_argument("--device", default="cpu")
    from fewseg.tiling import overlap_arg
    s.add_argument("--tile", type=count_int, default=None, metavar="PIXELS", help="large images at their own "
                   "resolution: adapt on PIXELS x PIXELS patches, segment window by window (0: whole images)")
    s.add_argument("--overlap", type=overlap_arg, default=None, help="of neighbouring windows with --tile: a "
                   "fraction of the tile below 1 (default 0.25) or whole pixels from 1 up")
    s.set_defaults(func=cmd_serve)
    return p


def _error_being_raised(exc: BaseException) -> FewsegError | None:
    """The fewseg error that was on its way out when ``exc`` interrupted its handling, if any."""
    seen = exc.__context__
    while seen is not None:
        if isinstance(seen, FewsegError):
            return seen
        seen = seen.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit status: 0 done (also after SIGTERM once training saved its state), 2 a bad input or
    configuration (one line on stderr, never a traceback), 130 Ctrl-C, 143 SIGTERM outside training, 1 an
    internal error (one line; ``FEWSEG_DEBUG=1`` shows the traceback)."""
    from fewseg.engine.signals import sigterm_as_interrupt
    from fewseg.errors import Terminated
    args = build_parser().parse_args(argv)
    try:
        with sigterm_as_interrupt(), cli_args.warnings_as_lines():
            if getattr(args, "device", None) is not None:
                from fewseg.engine.builders import resolve_device
                resolve_device(args.device)
            args.func(args)
    except Interrupted as exc:  # training saved checkpoints/last first
        print(f"fewseg: {exc}", file=sys.stderr)
        return 0 if exc.signal_name == "SIGTERM" else EXIT_INTERRUPTED
    except FewsegError as exc:
        print(f"fewseg: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Terminated as exc:
        error = _error_being_raised(exc)
        if error is not None:  # the error came first (a lost rank, then torchrun's SIGTERM): report the error
            print(f"fewseg: {error}", file=sys.stderr)
            if isinstance(error, Interrupted):
                return 0 if error.signal_name == "SIGTERM" else EXIT_INTERRUPTED
            return EXIT_ERROR
        print("fewseg: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("fewseg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # a file or folder the user named: missing, unreadable, disk full
        where = f" {exc.filename}" if exc.filename else ""
        print(f"fewseg: {exc.strerror or type(exc).__name__}:{where}" if exc.strerror else f"fewseg: {exc}",
              file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # never a traceback; FEWSEG_DEBUG=1 shows it
        if os.environ.get("FEWSEG_DEBUG"):
            raise
        text = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__
        print(f"fewseg: internal error ({reason}); FEWSEG_DEBUG=1 shows the traceback", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
