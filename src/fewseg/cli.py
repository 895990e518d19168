"""``fewseg demo|train|evaluate|adapt|list|config``: parse arguments -> config -> engine. Errors: one line, exit 2."""
from __future__ import annotations

import argparse
import json
import sys

import torch

from fewseg.errors import FewsegError


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
    from fewseg.config import load_config
    from fewseg.engine.trainer import Trainer, resume_trainer
    if args.resume:
        trainer = resume_trainer(args.resume, args.overrides, progress=not args.no_progress)
        print(f"resuming {args.resume} at iteration {trainer.iteration}")
    else:
        if args.config is None:
            raise FewsegError("fewseg train needs --config RECIPE (a YAML file or a shipped recipe's name; "
                              "`fewseg list` shows them) or --resume DIR")
        cfg = load_config(args.config, args.overrides)
        trainer = Trainer(cfg, progress=not args.no_progress)
    from fewseg.engine.session import describe_split
    for split, ds in (("train", trainer.train_set), ("val", trainer.val_set)):
        print(describe_split(split, ds.describe()))
    result = trainer.fit()
    print(json.dumps(result))


def cmd_evaluate(args) -> None:
    from fewseg.engine.session import evaluate_checkpoint
    evaluate_checkpoint(args.checkpoint, shots=args.shots, episodes=args.episodes, queries=args.queries,
                        steps=args.steps, seed=args.seed, baselines=args.baselines, dataset=args.dataset,
                        data_root=args.data_root, output=args.output, device=args.device)


def cmd_demo(args) -> None:
    from fewseg.report.demo import run_demo
    run_demo(output=args.output, quick=args.quick, device=args.device, seed=args.seed)


def cmd_adapt(args) -> None:
    from fewseg.engine.session import adapt_folder
    adapt_folder(args.checkpoint, args.support, args.images, args.output, steps=args.steps, device=args.device)


def build_parser() -> argparse.ArgumentParser:
    from fewseg import __version__
    p = argparse.ArgumentParser(prog="fewseg", description="Meta-learned few-shot image segmentation.")
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
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.iterations=200")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="few-shot evaluation on test classes, beside baselines")
    s.add_argument("--checkpoint", required=True, help="a run directory or a checkpoint directory")
    s.add_argument("--shots", type=int, nargs="+", default=None, help="default: the run's eval.shots")
    s.add_argument("--episodes", type=int, default=None, help="per shot count; default: the run's eval.episodes")
    s.add_argument("--queries", type=int, default=None, help="per episode; default: the run's eval.queries")
    s.add_argument("--steps", type=int, default=None, help="inner steps at test time")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--baselines", nargs="*", default=None,
                   help="baselines to run (no names: all of them); omit the flag for none")
    s.add_argument("--dataset", default=None, help="evaluate on another dataset (cross-dataset)")
    s.add_argument("--data-root", default=None)
    s.add_argument("--output", default=None, help="JSON results file (default: beside the checkpoint)")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("demo", help="meta-train on the embedded synthetic set, evaluate vs baselines, report")
    s.add_argument("--quick", action="store_true", help="a sub-minute smoke run")
    s.add_argument("--output", default="runs/demo")
    s.add_argument("--device", default="cpu")
    s.add_argument("--seed", type=int, default=0, help="the recipe's seed (initialisation and episodes)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("adapt", help="adapt to a folder of labelled images and segment new images")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--support", required=True, help="folder of images with masks <stem>.png (or masks/ subfolder)")
    s.add_argument("--images", required=True, help="folder of images to segment")
    s.add_argument("--output", required=True, help="where masks and overlays are written")
    s.add_argument("--steps", type=int, default=None)
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_adapt)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "device", "cpu").startswith("cuda") and not torch.cuda.is_available():
        print("fewseg: --device cuda asked for but CUDA is not available", file=sys.stderr)
        return 2
    try:
        args.func(args)
    except FewsegError as exc:
        print(f"fewseg: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fewseg: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
