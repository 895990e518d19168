"""Every CLI error is one line on stderr with a non-zero exit status, never a traceback: each subcommand with
bad arguments, bad values, missing or tampered files, devices this machine lacks."""
import json
import shutil

import pytest
from conftest import tiny_config, tiny_eval

from fewseg.cli import build_parser, main
from fewseg.config import config_from_dict
from fewseg.engine.trainer import Trainer

RUN = tiny_config(1, eval=tiny_eval(2))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    Trainer(config_from_dict(RUN, [f"output={out}"]), progress=False).fit()
    return out


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def run_cli(args, capsys) -> tuple[int, str]:
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:  # argparse
        rc = exc.code
    captured = capsys.readouterr()
    return rc, captured.err


def assert_one_line_error(rc, err, args):
    assert rc not in (0, None), (args, err)
    assert "Traceback" not in err and "internal error" not in err, (args, err)
    assert err.count("\n") == 1 and err.startswith("fewseg"), (args, err)


@pytest.mark.parametrize("command", subcommands())
def test_every_subcommand_refuses_an_unknown_flag_in_one_line(command, capsys):
    rc, err = run_cli([command, "--no-such-flag"], capsys)
    assert_one_line_error(rc, err, command)
    assert rc == 2 and "--help`" in err


def files(tmp_path):
    """Bad files to hand to the commands."""
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "scalar.yaml").write_text("5\n")
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "dup.yaml").write_text("train:\n  iterations: 2\n  iterations: 3\n")
    lol = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))
    (tmp_path / "bomb.yaml").write_text(lol + "data: {options: {x: *i}}\n")
    (tmp_path / "deep.yaml").write_text("data: {options: {x: " + "[" * 5000 + "]" * 5000 + "}}\n")
    (tmp_path / "a_file").write_text("")
    return tmp_path


def bad_invocations(run, tmp):
    ckpt = ["--checkpoint", run]
    adapt = ["adapt", *ckpt, "--support", tmp / "nowhere", "--images", tmp / "nowhere", "--output", tmp / "o"]
    train = ["train", "--no-progress", "--config"]
    small = [f"output={tmp / 'r'}", "train.iterations=1", "data.image_size=16", "train.val_episodes=1"]
    return {
        "no command": [],
        "unknown command": ["nope"],
        # evaluate
        "evaluate without checkpoint": ["evaluate"],
        "evaluate missing run": ["evaluate", "--checkpoint", tmp / "nowhere"],
        "evaluate a file": ["evaluate", "--checkpoint", tmp / "a_file"],
        "evaluate unknown baseline": ["evaluate", *ckpt, "--baselines", "foo"],
        "evaluate shots 0": ["evaluate", *ckpt, "--shots", "0"],
        "evaluate shots text": ["evaluate", *ckpt, "--shots", "one"],
        "evaluate episodes 0": ["evaluate", *ckpt, "--episodes", "0"],
        "evaluate episodes negative": ["evaluate", *ckpt, "--episodes", "-4"],
        "evaluate queries 0": ["evaluate", *ckpt, "--queries", "0"],
        "evaluate steps -3": ["evaluate", *ckpt, "--steps", "-3"],
        "evaluate seed -1": ["evaluate", *ckpt, "--seed", "-1"],
        "evaluate seed huge": ["evaluate", *ckpt, "--seed", str(2**70)],
        "evaluate unknown dataset": ["evaluate", *ckpt, "--dataset", "nope"],
        "evaluate folder dataset without root": ["evaluate", *ckpt, "--dataset", "folder", "--data-root",
                                                 tmp / "nowhere"],
        "evaluate device cuda": ["evaluate", *ckpt, "--device", "cuda"],
        "evaluate device mps": ["evaluate", *ckpt, "--device", "mps"],
        "evaluate device nonsense": ["evaluate", *ckpt, "--device", "gpu0"],
        "evaluate output into a file": ["evaluate", *ckpt, "--output", tmp / "a_file" / "eval.json"],
        # adapt
        "adapt steps -3": [*adapt, "--steps", "-3"],
        "adapt missing folders": adapt,
        "adapt device mps": [*adapt, "--device", "mps"],
        "adapt missing run": ["adapt", "--checkpoint", tmp / "nowhere", "--support", tmp, "--images", tmp,
                              "--output", tmp / "o"],
        # train
        "train without config": ["train", "--no-progress"],
        "train unknown recipe": [*train, "nope"],
        "train list yaml": [*train, tmp / "list.yaml"],
        "train scalar yaml": [*train, tmp / "scalar.yaml"],
        "train binary yaml": [*train, tmp / "binary.yaml"],
        "train duplicate key": [*train, tmp / "dup.yaml"],
        "train alias bomb": [*train, tmp / "bomb.yaml"],
        "train deep nesting": [*train, tmp / "deep.yaml"],
        "train a folder as config": [*train, tmp],
        "train device cuda": [*train, "synthetic_maml", *small, "device=cuda"],
        "train device mps": [*train, "synthetic_maml", *small, "device=mps"],
        "train device nonsense": [*train, "synthetic_maml", *small, "device=gpu0"],
        "train bad override": [*train, "synthetic_maml", "train.iterations"],
        "train unknown key": [*train, "synthetic_maml", "train.iteratons=3"],
        "train checkpoint_every 0": [*train, "synthetic_maml", *small, "train.checkpoint_every=0"],
        "train checkpoint_every -1": [*train, "synthetic_maml", *small, "train.checkpoint_every=-1"],
        "train val_episodes 0": [*train, "synthetic_maml", *small, "train.val_episodes=0"],
        "train grad_clip -1": [*train, "synthetic_maml", *small, "train.grad_clip=-1"],
        "train max_loss nan": [*train, "synthetic_maml", *small, "train.max_loss=.nan"],
        "train eval_steps -1": [*train, "synthetic_maml", *small, "algorithm.eval_steps=-1"],
        "train task_chunk -1": [*train, "synthetic_maml", *small, "algorithm.task_chunk=-1"],
        "train seed huge": [*train, "synthetic_maml", *small, f"seed={2**64}"],
        "train seed negative": [*train, "synthetic_maml", *small, "seed=-1"],
        "train image size 33 for a unet of depth 3": [*train, "synthetic_maml", *small, "data.image_size=33"],
        "train image size absurd": [*train, "synthetic_maml", *small, "data.image_size=1000000"],
        "train unwritable output": [*train, "synthetic_maml", *small, f"output={tmp / 'a_file' / 'run'}"],
        "train unknown model option": [*train, "synthetic_maml", *small, "model.options.widht=3"],
        "train unknown algorithm": [*train, "synthetic_maml", *small, "algorithm.name=nope"],
        "train resume missing": ["train", "--resume", tmp / "nowhere"],
        "train resume a file": ["train", "--resume", tmp / "a_file"],
        # config, demo, list
        "config show unknown": ["config", "--show", "nope"],
        "config show bomb": ["config", "--show", tmp / "bomb.yaml"],
        "config write missing file": ["config", "--write", tmp / "nowhere.md"],
        "config write without markers": ["config", "--write", tmp / "a_file"],
        "demo device mps": ["demo", "--device", "mps"],
        "demo seed -1": ["demo", "--seed", "-1"],
        "list extra": ["list", "extra"],
    }


def test_every_bad_invocation_is_one_line_with_a_non_zero_exit(run, tmp_path, capsys):
    tmp = files(tmp_path)
    for name, args in bad_invocations(run, tmp).items():
        rc, err = run_cli(args, capsys)
        assert_one_line_error(rc, err, name)
        assert rc == 2, (name, rc, err)


def test_value_errors_name_the_key_or_argument(run, tmp_path, capsys):
    tmp = files(tmp_path)
    cases = bad_invocations(run, tmp)
    expect = {"evaluate shots 0": "--shots: must be >= 1, got 0", "evaluate episodes 0": "--episodes",
              "evaluate steps -3": "--steps: must be >= 0", "adapt steps -3": "--steps: must be >= 0",
              "evaluate unknown baseline": "unknown baseline 'foo'", "train device cuda": "CUDA is not available",
              "train device mps": "mps is not available", "train checkpoint_every 0": "'train.checkpoint_every'",
              "train max_loss nan": "'train.max_loss'", "train alias bomb": "YAML aliases",
              "train list yaml": "must hold a mapping", "train binary yaml": "not UTF-8",
              "train duplicate key": "duplicate key 'iterations'", "train seed huge": "'seed'",
              "train image size 33 for a unet of depth 3": "cannot take 33x33",
              "train unwritable output": "config key 'output': cannot write into"}
    for name, fragment in expect.items():
        _, err = run_cli(cases[name], capsys)
        assert fragment in err, (name, err)


def test_a_tampered_run_is_one_line_for_evaluate_and_resume(run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    for name in ("best", "last"):
        meta_file = copy / "checkpoints" / name / "meta.json"
        meta = json.loads(meta_file.read_text())
        meta["iteration"] = -124
        meta_file.write_text(json.dumps(meta))
    for args in (["evaluate", "--checkpoint", copy], ["train", "--no-progress", "--resume", copy]):
        rc, err = run_cli(args, capsys)
        assert_one_line_error(rc, err, args)
        assert "'iteration' must be an integer >= 0" in err


def test_floats_as_users_write_them_are_accepted(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  outer_lr: 1e-3\nalgorithm:\n  inner_lr: 5E-2\n")
    assert main(["config", "--show", str(recipe), "train.grad_clip=1e1"]) == 0
    import yaml
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["train"]["outer_lr"] == 1e-3 and shown["algorithm"]["inner_lr"] == 0.05
    assert shown["train"]["grad_clip"] == 10.0


def test_a_sigterm_during_an_errors_way_out_keeps_the_error(monkeypatch, capsys):
    """torchrun stops the other ranks with SIGTERM once one dies: a survivor whose collective already failed must
    still say why (the error), not just "terminated"."""
    from fewseg import cli
    from fewseg.errors import Terminated, TrainingError

    def failing_train(args):
        try:
            raise TrainingError("lost contact with another rank during all_reduce (peer closed)")
        finally:  # the SIGTERM handler runs while the error unwinds (closing the log, restoring handlers)
            raise Terminated("received signal 15 (SIGTERM)")

    monkeypatch.setattr(cli, "cmd_train", failing_train)
    rc, err = run_cli(["train", "--config", "synthetic_maml"], capsys)
    assert rc == 2 and err == "fewseg: lost contact with another rank during all_reduce (peer closed)\n"

    def terminated_train(args):
        raise Terminated("received signal 15 (SIGTERM)")

    monkeypatch.setattr(cli, "cmd_train", terminated_train)
    rc, err = run_cli(["train", "--config", "synthetic_maml"], capsys)
    assert rc == 143 and err == "fewseg: terminated (SIGTERM)\n"
