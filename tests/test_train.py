"""Meta-training engine: configs, exact resume, Ctrl-C, NaN guard, checkpoints, CLI errors."""
import json
import math

import pytest
import torch
from conftest import ctrl_c_during

from fewseg.cli import main
from fewseg.config import config_from_dict, load_config
from fewseg.engine.checkpoint import load_checkpoint
from fewseg.engine.trainer import Trainer, resume_trainer
from fewseg.errors import CheckpointError, ConfigError, TrainingError

TINY = {
    "seed": 3,
    "data": {"name": "synthetic", "image_size": 32},
    "model": {"name": "seed-cnn", "options": {"width": 4}},
    "algorithm": {"name": "maml", "inner_steps": 1, "inner_lr": 0.1},
    "train": {"iterations": 6, "meta_batch": 2, "shots": 2, "queries": 2, "outer_lr": 0.01, "schedule": "cosine",
              "val_every": 3, "val_episodes": 2, "checkpoint_every": 3},
    "eval": {"episodes": 2, "shots": [1, 2], "long_steps": 2, "transfer_images": 20, "lr_select_episodes": 4,
             "probe_steps": [2, 4], "probe_rates": [0.01, 0.1]},
}


def tiny(tmp_path, *overrides):
    return config_from_dict(TINY, [f"output={tmp_path}", *overrides])


def test_unknown_or_bad_config_keys_are_named(tmp_path):
    with pytest.raises(ConfigError, match="'train.iteratons'"):
        config_from_dict(TINY, ["train.iteratons=5"])
    with pytest.raises(ConfigError, match="'algorithm.inner_lr' must be float"):
        config_from_dict(TINY, ["algorithm.inner_lr=fast"])
    with pytest.raises(ConfigError, match="'train.meta_batch' has a bad value"):
        config_from_dict(TINY, ["train.meta_batch=0"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  iterations: 5\n modl: x\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="model.options.widht|unexpected keyword argument 'widht'"):
        Trainer(tiny(tmp_path, "model.options.widht=3"), progress=False)


def test_dotted_overrides_parse_yaml_values():
    cfg = config_from_dict(TINY, ["train.iterations=9", "eval.shots=[1,5]", "algorithm.first_order=true"])
    assert cfg.train.iterations == 9 and cfg.eval.shots == [1, 5] and cfg.algorithm.first_order is True


def test_training_writes_logs_and_checkpoints_with_config_and_versions(tmp_path):
    result = Trainer(tiny(tmp_path), progress=False).fit()
    assert result["iteration"] == 6
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, 7))
    assert all(math.isfinite(r["loss"]) for r in rows) and "val_miou" in rows[2]
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last")
    assert ckpt.meta["iteration"] == 6 and ckpt.meta["config"]["train"]["iterations"] == 6
    assert "torch" in ckpt.meta["versions"]
    assert (tmp_path / "checkpoints" / "best" / "weights.safetensors").exists()


def test_log_records_the_meta_gradient_norm_and_the_inner_loops_support_loss(tmp_path, monkeypatch):
    """grad_norm every iteration; the support loss before / after the inner steps every INNER_LOG_EVERY iterations
    (1, 1 + every, ...), from a probe that changes nothing: the same weights as a run without it."""
    import fewseg.engine.trainer as trainer_module
    monkeypatch.setattr(trainer_module, "INNER_LOG_EVERY", 4)
    probed = Trainer(tiny(tmp_path / "a"), progress=False)
    probed.fit()
    rows = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert all(r["grad_norm"] > 0 for r in rows)
    assert [r["iteration"] for r in rows if "support_loss_before" in r] == [1, 5]
    assert all(r["support_loss_after"] < r["support_loss_before"] for r in rows if "support_loss_after" in r)
    plain = Trainer(tiny(tmp_path / "b"), progress=False)
    monkeypatch.setattr(plain, "_support_losses", lambda batch: (0.0, 0.0))  # no probe
    plain.fit()
    for (name, a), b in zip(probed.algo.state_dict().items(), plain.algo.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("algorithm", ["maml", "mr-maml", "maml++"])
def test_interrupt_then_resume_reaches_the_same_weights(tmp_path, monkeypatch, algorithm):
    # mr-maml draws noise, maml++ switches order and loss weights by iteration: both must resume exactly
    extra = [f"algorithm.name={algorithm}"]
    if algorithm == "maml++":
        extra += ["algorithm.options.msl_iterations=4", "algorithm.options.first_order_iterations=2"]
    straight = Trainer(tiny(tmp_path / "a", *extra), progress=False)
    straight.fit()

    interrupted = Trainer(tiny(tmp_path / "b", *extra), progress=False)
    ctrl_c_during(monkeypatch, interrupted.algo, 5)  # Ctrl-C in the middle of iteration 5
    with pytest.raises(TrainingError, match="interrupted at iteration 4"):
        interrupted.fit()
    resumed = resume_trainer(tmp_path / "b", progress=False)
    assert resumed.iteration == 4
    resumed.fit()
    for (name, a), b in zip(straight.algo.state_dict().items(), resumed.algo.state_dict().values()):
        assert torch.equal(a, b), name
    log = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in log] == list(range(1, 7))


def test_nan_meta_loss_stops_with_a_clear_message_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(tiny(tmp_path), progress=False)
    original = trainer.algo.meta_backward
    calls = {"n": 0}

    def diverging(batch, *, iteration, **kw):
        calls["n"] += 1
        logs = original(batch, iteration=iteration, **kw)
        if calls["n"] == 5:
            logs["loss"] = float("nan")
        return logs

    monkeypatch.setattr(trainer.algo, "meta_backward", diverging)
    with pytest.raises(TrainingError, match="meta-loss is nan at iteration 5.*last good checkpoint kept"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "checkpoints" / "last").meta["iteration"] == 3


def test_cli_reports_config_and_checkpoint_errors_in_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  iterations: 2\n  shotz: 3\n")
    assert main(["train", "--config", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fewseg: unknown config key 'train.shotz'") and "\n" not in err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "no checkpoint found" in capsys.readouterr().err


def test_corrupt_or_foreign_checkpoints_are_refused(tmp_path):
    from fewseg.engine.session import load_algorithm
    Trainer(tiny(tmp_path), progress=False).fit()
    ckpt = tmp_path / "checkpoints" / "last"
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["config"]["model"] = {"name": "unet", "options": {"depth": 2, "width": 4}}
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not fit model 'unet'"):
        load_algorithm(ckpt)
    (ckpt / "weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="weights.safetensors"):
        load_algorithm(ckpt)


@pytest.mark.parametrize("name", __import__("fewseg.recipes").recipes.recipe_names())
def test_every_shipped_recipe_loads(name):
    cfg = load_config(name)
    assert cfg.train.iterations > 0 and cfg.data.name


def test_bf16_autocast_trains_with_finite_losses(tmp_path):
    Trainer(tiny(tmp_path, "train.autocast=bf16", "train.iterations=2"), progress=False).fit()
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    with pytest.raises(ConfigError, match="train.autocast"):
        tiny(tmp_path, "train.autocast=fp8")


@pytest.mark.parametrize("images", [0, 1])
def test_training_with_inner_checkpoint_reaches_the_same_weights(tmp_path, images):
    """algorithm.options.inner_checkpoint=true (image by image with checkpoint_images=1): the same run."""
    plain = Trainer(tiny(tmp_path / "a"), progress=False)
    plain.fit()
    checkpointed = Trainer(tiny(tmp_path / "b", "algorithm.options.inner_checkpoint=true",
                                f"algorithm.options.checkpoint_images={images}"), progress=False)
    assert checkpointed.algo.inner_checkpoint and checkpointed.algo.checkpoint_images == images
    checkpointed.fit()
    for (name, a), b in zip(plain.algo.state_dict().items(), checkpointed.algo.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
