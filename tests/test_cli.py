"""The command line: --version, list, config, recipes by name, evaluate reading the run's eval settings, baselines."""
import json
import shutil

import pytest
import yaml
from conftest import tiny_config, tiny_eval

import fewseg
from fewseg.cli import build_parser, main
from fewseg.config import config_from_dict, config_reference, load_config
from fewseg.engine.trainer import Trainer
from fewseg.recipes import recipe_names

BASELINE_NAMES = ["zero-shot", "random-init", "random-init-long", "transfer", "prototype", "imagenet-prototype",
                  "linear-probe"]
SMALL = ["data.image_size=24", "model.name=unet", "model.options={depth: 2, width: 4}", "train.meta_batch=1",
         "train.shots=2", "train.queries=2", "algorithm.inner_steps=1", "train.val_episodes=2",
         "eval.lr_select_episodes=2"]
TINY = tiny_config(1, 24, {"name": "unet", "options": {"depth": 2, "width": 4}}, {"shots": 2, "queries": 2},
                   tiny_eval(3, shots=2, queries=2, transfer_images=20, long_steps=2, lr_select_episodes=2))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    Trainer(config_from_dict(TINY, [f"output={out}"]), progress=False).fit()
    return out


def edit_stored_config(run, edit) -> None:
    """Apply ``edit(config dict)`` to the config stored in every checkpoint of ``run``."""
    for name in ("best", "last"):
        meta_file = run / "checkpoints" / name / "meta.json"
        meta = json.loads(meta_file.read_text())
        edit(meta["config"])
        meta_file.write_text(json.dumps(meta))


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"fewseg {fewseg.__version__}\n"


def test_list_reads_the_registries_and_the_shipped_recipes(capsys):
    assert main(["list"]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["baselines"].strip() == ", ".join(BASELINE_NAMES) == ", ".join(fewseg.list_baselines())
    assert lines["recipes"].strip() == ", ".join(recipe_names()) and "synthetic_maml" in lines["recipes"]
    assert "unet" in lines["models"] and "reptile" in lines["algorithms"] and "bce" in lines["losses"]


def test_config_prints_the_reference_or_a_resolved_recipe(capsys):
    assert main(["config"]) == 0
    assert capsys.readouterr().out == config_reference() + "\n"
    assert main(["config", "--show", "synthetic_maml", "train.iterations=7"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown == load_config("synthetic_maml", ["train.iterations=7"]).to_dict() and shown["eval"]["shots"] == [1, 5]


def test_train_takes_a_shipped_recipe_by_name(tmp_path, capsys):
    assert main(["train", "--no-progress", "--config", "synthetic_maml", f"output={tmp_path}",
                 "train.iterations=1", *SMALL]) == 0
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["name"] == "synthetic_maml"
    meta = json.loads((tmp_path / "checkpoints" / "best" / "meta.json").read_text())
    assert sorted(meta["algorithm_state"]["test_time"]) == ["1", "5"]  # eval.tune: plans for eval.shots
    assert main(["train", "--config", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nope'" in err and ", ".join(recipe_names()) in err


def test_a_users_yaml_with_a_removed_key_gets_the_unknown_key_error(tmp_path, capsys):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("eval:\n  steps: 5\n")
    assert main(["train", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown config key 'eval.steps'" in err


def test_demo_seed_flag():
    assert build_parser().parse_args(["demo"]).seed == 0
    assert build_parser().parse_args(["demo", "--seed", "4"]).seed == 4


def test_baselines_registry_names_and_order():
    from fewseg.registry import BASELINES
    assert fewseg.list_baselines() == BASELINE_NAMES == BASELINES.names()


def test_an_unknown_baseline_is_one_line_naming_it_and_the_choices(tmp_path, capsys):
    from fewseg.baselines import check_baselines
    from fewseg.errors import ConfigError
    assert main(["evaluate", "--checkpoint", str(tmp_path), "--baselines", "zero-shot", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown baseline 'nope'" in err and ", ".join(BASELINE_NAMES) in err
    with pytest.raises(ConfigError, match="unknown baseline 'protoype'"):
        check_baselines(["protoype"])
    assert check_baselines(["prototype", "zero-shot"]) == ["zero-shot", "prototype"]  # registration order


def test_evaluate_reads_shots_episodes_and_queries_from_the_run(tiny_run, tmp_path):
    out = tmp_path / "e.json"
    assert main(["evaluate", "--checkpoint", str(tiny_run), "--output", str(out)]) == 0
    record = json.loads(out.read_text())
    assert (record["episodes"], record["queries"], list(record["results"])) == (3, 2, ["2"])
    assert record["results"]["2"]["maml"]["n_episodes"] == 3
    assert main(["evaluate", "--checkpoint", str(tiny_run), "--output", str(out), "--shots", "1",
                 "--episodes", "2", "--queries", "1"]) == 0  # the flags win
    record = json.loads(out.read_text())
    assert (record["episodes"], record["queries"], list(record["results"])) == (2, 1, ["1"])


def test_evaluate_scores_at_the_stored_threshold(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    out = tmp_path / "e.json"

    def miou_at(threshold):
        edit_stored_config(run, lambda c: c["eval"].update(threshold=threshold))
        assert main(["evaluate", "--checkpoint", str(run), "--output", str(out), "--baselines", "zero-shot"]) == 0
        record = json.loads(out.read_text())
        assert record["threshold"] == threshold
        return [record["results"]["2"][m]["miou"] for m in ("maml", "zero-shot")]

    assert miou_at(0.999999) == [0.0, 0.0]  # no pixel is that sure: nothing predicted
    assert all(m > 0 for m in miou_at(1e-6))  # every pixel foreground: IoU = foreground share


def test_baseline_rates_are_chosen_at_the_stored_threshold(tiny_run, tmp_path, monkeypatch):
    from fewseg.baselines import context
    from fewseg.engine.session import evaluate_checkpoint
    run = shutil.copytree(tiny_run, tmp_path / "run")
    edit_stored_config(run, lambda c: c["eval"].update(threshold=0.3))
    seen = []

    def scored(learner, episodes, threshold, device):
        seen.append(threshold)
        return {"miou": 0.0}

    monkeypatch.setattr(context, "evaluate", scored)
    evaluate_checkpoint(run, episodes=1, baselines=["random-init"], output=tmp_path / "e.json", log=lambda *_: None)
    assert seen and set(seen) == {0.3}


def test_a_checkpoint_with_the_removed_eval_keys_still_loads_and_evaluates(tiny_run, tmp_path):
    from fewseg.engine.session import load_algorithm
    run = shutil.copytree(tiny_run, tmp_path / "run")
    edit_stored_config(run, lambda c: c["eval"].update(steps=None, baselines=BASELINE_NAMES))
    cfg, algo, _ = load_algorithm(run)
    assert algo.eval_steps == 1
    assert cfg.eval.episodes == 3 and not hasattr(cfg.eval, "steps") and not hasattr(cfg.eval, "baselines")
    assert main(["evaluate", "--checkpoint", str(run), "--output", str(tmp_path / "e.json")]) == 0
