"""Reliability of training: Ctrl-C / SIGTERM at every phase of an iteration and kill -9 at any moment resume to the
weights of an uninterrupted run; a moved or copied run resumes in place; a full disk keeps the last checkpoint;
tampered checkpoint metadata is refused in one line."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

import fewseg.engine.checkpoint as ckpt_mod
from fewseg.config import config_from_dict
from fewseg.engine.checkpoint import load_checkpoint, save_checkpoint
from fewseg.engine.integrity import file_sha256
from fewseg.engine.trainer import Trainer, resume_trainer
from fewseg.errors import CheckpointError, ConfigError, Interrupted, TrainingError

TINY = tiny_config(5, train={"iterations": 6, "meta_batch": 2, "outer_lr": 0.01, "schedule": "cosine",
                              "val_every": 3, "checkpoint_every": 3})
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}


def tiny(out, *overrides):
    return config_from_dict(TINY, [f"output={out}", *overrides])


def weights(trainer_or_dir):
    if isinstance(trainer_or_dir, Trainer):
        return {k: v.detach().clone() for k, v in trainer_or_dir.algo.state_dict().items()}
    return load_checkpoint(Path(trainer_or_dir)).tensors


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k, value in a.items():
        assert torch.equal(value, b[k]), k


def log_rows(run):
    return [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    trainer = Trainer(tiny(out), progress=False)
    trainer.fit()
    return {"dir": out, "weights": weights(trainer), "rows": log_rows(out),
            "best": weights(out / "checkpoints" / "best"),
            "best_meta": load_checkpoint(out / "checkpoints" / "best").meta}


def check_resumed_like(straight, run):
    """``run`` (finished after interruptions) equals the uninterrupted run: weights, best, log lines."""
    assert_same(straight["weights"], weights(Path(run) / "checkpoints" / "last"))
    assert_same(straight["best"], weights(Path(run) / "checkpoints" / "best"))
    best_meta = load_checkpoint(Path(run) / "checkpoints" / "best").meta
    assert best_meta["iteration"] == straight["best_meta"]["iteration"]
    rows = log_rows(run)
    assert [r["iteration"] for r in rows] == list(range(1, 7))  # every iteration logged exactly once
    for got, want in zip(rows, straight["rows"]):
        assert got.get("val_miou") == want.get("val_miou") and got["loss"] == want["loss"], got["iteration"]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def send(signame):
    os.kill(os.getpid(), SIGNALS[signame])


PHASES = ["step", "validation", "best-write", "last-write", "after-log"]


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("phase", PHASES)
def test_an_interrupt_in_any_phase_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch, straight, phase,
                                                                         signame):
    """The signal lands at iteration 3 (a validation, best and last iteration): in its meta-step, in its validation,
    during the checkpoints/best or checkpoints/last write, or just after its log line."""
    trainer = Trainer(tiny(tmp_path), progress=False)
    fired = []

    def once() -> bool:
        if fired:
            return False
        fired.append(True)
        return True

    if phase == "step":
        original = trainer.algo.meta_backward

        def meta_backward(batch, *, iteration, **kw):
            if iteration == 2 and once():
                send(signame)
            return original(batch, iteration=iteration, **kw)
        monkeypatch.setattr(trainer.algo, "meta_backward", meta_backward)
    elif phase == "validation":
        original_validate = trainer.validate

        def validate():
            if once():
                send(signame)
            return original_validate()
        monkeypatch.setattr(trainer, "validate", validate)
    elif phase in ("best-write", "last-write"):
        target = phase.split("-")[0]
        real_save_file = ckpt_mod.save_file

        def save_file(tensors, filename):
            real_save_file(tensors, filename)
            if Path(filename).parent.name.startswith(f"{target}.tmp") and once():
                send(signame)  # the weights are written, meta.json and optimizer.pt not yet
        monkeypatch.setattr(ckpt_mod, "save_file", save_file)
    else:
        original_after = trainer._after_iteration

        def after(bar, loss, count=True):
            if trainer.iteration == 2 and once():
                send(signame)
            return original_after(bar, loss, count)
        monkeypatch.setattr(trainer, "_after_iteration", after)

    with pytest.raises(Interrupted) as info:
        trainer.fit()
    assert fired and info.value.signal_name == signame and "state saved to" in str(info.value)
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None) or callable(signal.getsignal(signal.SIGTERM))
    resumed = resume_trainer(tmp_path, progress=False)
    resumed.fit()
    check_resumed_like(straight, tmp_path)


def test_sigterm_handler_is_restored_after_training(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    Trainer(tiny(tmp_path, "train.iterations=1"), progress=False).fit()
    assert signal.getsignal(signal.SIGTERM) is before


def interrupted_run(out, monkeypatch, at: int) -> None:
    """A TINY run in ``out`` stopped by Ctrl-C in the meta-step of iteration ``at + 1`` (state saved at ``at``)."""
    trainer = Trainer(tiny(out), progress=False)
    original = trainer.algo.meta_backward

    def meta_backward(batch, *, iteration, **kw):
        if iteration == at:
            raise KeyboardInterrupt
        return original(batch, iteration=iteration, **kw)
    monkeypatch.setattr(trainer.algo, "meta_backward", meta_backward)
    with pytest.raises(Interrupted, match=f"interrupted at iteration {at} "):
        trainer.fit()


@pytest.mark.parametrize("how", ["move", "copy"])
def test_a_moved_or_copied_run_resumes_in_its_own_folder(tmp_path, monkeypatch, straight, how):
    first = tmp_path / "first"
    interrupted_run(first, monkeypatch, at=4)
    second = tmp_path / "second"
    (shutil.move if how == "move" else shutil.copytree)(first, second)
    before = snapshot(first) if how == "copy" else None
    resume_trainer(second, progress=False).fit()
    check_resumed_like(straight, second)
    if how == "move":
        assert not first.exists()  # nothing recreated at the old place
    else:
        assert snapshot(first) == before  # the original is untouched, file by file
    assert json.loads((second / "checkpoints" / "last" / "meta.json").read_text())["config"]["output"] == str(second)
    with pytest.raises(ConfigError, match="cannot move"):
        resume_trainer(second, [f"output={tmp_path / 'elsewhere'}"], progress=False)


def test_a_torn_last_log_line_from_a_crash_is_dropped_on_resume(tmp_path, monkeypatch, straight):
    interrupted_run(tmp_path, monkeypatch, at=4)
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"iteration": 5, "loss": 0.6')  # kill -9 in the middle of a write
    resume_trainer(tmp_path, progress=False).fit()
    assert [r["iteration"] for r in log_rows(tmp_path)] == list(range(1, 7))
    assert_same(straight["weights"], weights(tmp_path / "checkpoints" / "last"))


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(tiny(tmp_path), progress=False)
    real_save_file = ckpt_mod.save_file

    def save_file(tensors, filename):
        if trainer.iteration == 6:
            with open(filename, "wb") as f:
                f.write(b"\0" * 100)  # part of the file, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return real_save_file(tensors, filename)
    monkeypatch.setattr(ckpt_mod, "save_file", save_file)
    with pytest.raises(TrainingError, match="No space left on device.*previous one is intact"):
        trainer.fit()
    kept = load_checkpoint(tmp_path / "checkpoints" / "last")
    assert kept.meta["iteration"] == 3 and kept.path == tmp_path / "checkpoints" / "last"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best", "last"]  # no temp leftovers


def test_disk_full_during_the_swap_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "ck", {"w": torch.ones(2)}, {"n": 1})

    def replace(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(ckpt_mod.os, "replace", replace)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "ck", {"w": torch.zeros(2)}, {"n": 2})
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.meta["n"] == 1 and torch.equal(ck.tensors["w"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_an_unwritable_output_folder_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="config key 'output': cannot write into"):
        Trainer(tiny(blocker / "run"), progress=False)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(ConfigError, match="Permission denied"):
                Trainer(tiny(ro / "run"), progress=False)
        finally:
            ro.chmod(0o700)


def test_an_image_size_the_model_cannot_take_is_refused_at_load(tmp_path):
    with pytest.raises(ConfigError, match="data.image_size.*unet.*33x33.*divisible by 4"):
        Trainer(tiny(tmp_path, "model.name=unet", "model.options={depth: 3, width: 4}", "data.image_size=33"),
                progress=False)
    assert not (tmp_path / "log.jsonl").exists()


# --- tampered checkpoint metadata ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("done")
    Trainer(tiny(out, "train.iterations=3"), progress=False).fit()
    return out


def tamper(finished_run, tmp_path, edit_meta=None, edit_state=None):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    last = run / "checkpoints" / "last"
    if edit_meta is not None:
        meta = json.loads((last / "meta.json").read_text())
        edit_meta(meta)
        (last / "meta.json").write_text(json.dumps(meta))
    if edit_state is not None:
        state = torch.load(last / "optimizer.pt", weights_only=True)
        edit_state(state)
        torch.save(state, last / "optimizer.pt")
        # the SHA-256 record updated too (else it refuses the file first): the trainer's own checks behind it
        meta = json.loads((last / "meta.json").read_text())
        meta["integrity"]["sha256"]["optimizer.pt"] = file_sha256(last / "optimizer.pt")
        (last / "meta.json").write_text(json.dumps(meta))
    return run


META_EDITS = {
    "no config": (lambda m: m.pop("config"), "has no 'config'"),
    "no iteration": (lambda m: m.pop("iteration"), "has no 'iteration'"),
    "negative iteration": (lambda m: m.update(iteration=-124), "'iteration' must be an integer >= 0"),
    "infinite iteration": (lambda m: m.update(iteration=float("inf")), "'iteration' must be an integer >= 0"),
    "string iteration": (lambda m: m.update(iteration="3"), "'iteration' must be an integer >= 0"),
    "float iteration": (lambda m: m.update(iteration=3.5), "'iteration' must be an integer >= 0"),
    "config a list": (lambda m: m.update(config=[1, 2]), "'config' must be a mapping"),
    "bad best": (lambda m: m.update(best_val_miou=float("nan")), "'best_val_miou' must be a number"),
    "bad pending": (lambda m: m.update(pending=[1]), "'pending' must be null"),
    "absurd image size": (lambda m: m["config"]["data"].update(image_size=10**9), "'data.image_size'"),
    "absurd depth": (lambda m: m["config"]["model"].update(name="unet", options={"depth": 10**6, "width": 4}),
                     "model.options.depth"),
    "wrong kind": (lambda m: m.update(kind="transfer"), "not a meta-training checkpoint"),
    "wrong key type": (lambda m: m["config"]["train"].update(meta_batch="many"), "'train.meta_batch' must be int"),
}


@pytest.mark.parametrize("case", list(META_EDITS))
def test_tampered_checkpoint_metadata_is_one_line(finished_run, tmp_path, case):
    edit, message = META_EDITS[case]
    run = tamper(finished_run, tmp_path, edit_meta=edit)
    with pytest.raises((CheckpointError, ConfigError), match=message) as info:
        resume_trainer(run, ["train.iterations=5"], progress=False).fit()
    assert "\n" not in str(info.value)


STATE_EDITS = {
    "no sampler state": (lambda s: s.pop("sampler_rng"), "must hold 'optimizer'"),
    "short generator state": (lambda s: s.update(sampler_rng=torch.zeros(10, dtype=torch.uint8)),
                              "'sampler_rng' is not a CPU generator state"),
    "generator state of floats": (lambda s: s.update(sampler_rng=torch.zeros(5056)),
                                  "'sampler_rng' is not a CPU generator state"),
    "optimizer of another model": (lambda s: s.update(optimizer={"state": {}, "param_groups": [{"params": [0]}]}),
                                   "optimiser state does not fit"),
    "not a dict": (lambda s: s.clear() or s.update(x=1), "must hold 'optimizer'"),
}


@pytest.mark.parametrize("case", list(STATE_EDITS))
def test_tampered_optimizer_state_is_one_line(finished_run, tmp_path, case):
    edit, message = STATE_EDITS[case]
    run = tamper(finished_run, tmp_path, edit_state=edit)
    with pytest.raises(CheckpointError, match=message) as info:
        resume_trainer(run, ["train.iterations=5"], progress=False)
    assert "\n" not in str(info.value)


def test_nan_weights_are_refused_at_load(finished_run, tmp_path):
    from safetensors.torch import save_file

    from fewseg.engine.session import load_algorithm
    run = tamper(finished_run, tmp_path)
    for name in ("best", "last"):
        w = load_checkpoint(run / "checkpoints" / name).tensors
        w[next(iter(w))][..., 0] = float("nan")
        save_file(w, str(run / "checkpoints" / name / "weights.safetensors"))
    with pytest.raises(CheckpointError, match="NaN or infinite values"):
        load_algorithm(run)
    with pytest.raises(CheckpointError, match="NaN or infinite values"):
        resume_trainer(run, progress=False)


# --- real processes killed at several points ---------------------------------------------------------------
DRIVER = textwrap.dedent('''
    """Runs ``fewseg train`` in this process, with a hook that kills it (SIGKILL) or signals it at one point."""
    import os, signal, sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    import fewseg.engine.checkpoint as ckpt_mod
    from fewseg.algorithms.base import MetaAlgorithm
    from fewseg.cli import main

    point, args = sys.argv[1], sys.argv[2:]
    kill = lambda: os.kill(os.getpid(), signal.SIGKILL)
    slow = float(os.environ.get("DRIVER_SLOW", "0"))
    real_backward = MetaAlgorithm.meta_backward

    def meta_backward(self, batch, *, iteration, **kw):
        if point == "step" and iteration == 4:
            kill()
        time.sleep(slow)
        return real_backward(self, batch, iteration=iteration, **kw)
    MetaAlgorithm.meta_backward = meta_backward

    real_save_file, real_replace = ckpt_mod.save_file, ckpt_mod.os.replace
    saves = {"n": 0}

    def save_file(tensors, filename):
        saves["n"] += 1
        if point == "weights-write" and saves["n"] == 3:  # best@2, last@2, best@4 (half written)
            with open(filename, "wb") as f:
                f.write(b"\\0" * 64)
            kill()
        return real_save_file(tensors, filename)
    ckpt_mod.save_file = save_file

    class OS:
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def replace(src, dst):
            if point == "swap" and Path(dst).name == "last" and saves["n"] >= 4:  # old "last" moved aside
                kill()
            return real_replace(src, dst)
    ckpt_mod.os = OS()
    sys.exit(main(args))
''')
SUB_CONFIG = {**TINY, "train": {**TINY["train"], "iterations": 8, "val_every": 2, "checkpoint_every": 2}}


def run_driver(tmp_path, point, args, slow=0.0, wait=True):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DRIVER_SLOW": str(slow), "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, str(driver), point, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if wait:
        out, err = proc.communicate(timeout=240)
        return proc.returncode, out, err
    return proc


@pytest.fixture(scope="module")
def sub_straight(tmp_path_factory):
    base = tmp_path_factory.mktemp("sub")
    (base / "tiny.yaml").write_text(json.dumps(SUB_CONFIG))  # JSON is YAML
    rc, _, err = run_driver(base, "none", ["train", "--no-progress", "--config", str(base / "tiny.yaml"),
                                           f"output={base / 'straight'}"])
    assert rc == 0, err
    return base, weights(base / "straight" / "checkpoints" / "last"), log_rows(base / "straight")


def finish_and_compare(sub_straight, run):
    base, want, rows = sub_straight
    rc, _, err = run_driver(base, "none", ["train", "--no-progress", "--resume", str(run)])
    assert rc == 0 and "Traceback" not in err, err
    assert_same(want, weights(run / "checkpoints" / "last"))
    got = log_rows(run)
    assert [r["iteration"] for r in got] == [r["iteration"] for r in rows]
    assert [r.get("val_miou") for r in got] == [r.get("val_miou") for r in rows]


@pytest.mark.parametrize("point", ["step", "weights-write", "swap"])
def test_kill_9_at_a_point_leaves_a_loadable_checkpoint_and_resume_is_exact(sub_straight, point):
    base, _, _ = sub_straight
    run = base / f"kill-{point}"
    rc, _, err = run_driver(base, point, ["train", "--no-progress", "--config", str(base / "tiny.yaml"), f"output={run}"])
    assert rc == -signal.SIGKILL, err
    ckpt = load_checkpoint(run / "checkpoints" / "last")  # loadable (the old copy after a kill mid-swap)
    assert ckpt.meta["iteration"] in (2, 4)
    finish_and_compare(sub_straight, run)


@pytest.mark.parametrize("signame", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_a_signal_from_outside_at_a_random_moment_then_resume_is_exact(sub_straight, signame):
    base, _, _ = sub_straight
    run = base / f"signal-{signame}"
    proc = run_driver(base, "none", ["train", "--no-progress", "--config", str(base / "tiny.yaml"), f"output={run}"],
                      slow=0.3, wait=False)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "log.jsonl").exists()
                                          and len((run / "log.jsonl").read_text().splitlines()) >= 3):
        time.sleep(0.05)
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=120)
    if signame == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == (0 if signame == "SIGTERM" else 130), err
        assert "Traceback" not in err and f"({signame}); state saved to" in err and err.count("\n") == 1, err
    finish_and_compare(sub_straight, run)


# --- resources: memory of full-resolution evaluation ---------------------------------------------------------
MEMORY_SCRIPT = textwrap.dedent('''
    import os, resource, sys, numpy as np, torch
    from pathlib import Path
    from PIL import Image
    torch.set_num_threads(1)
    side, root = int(sys.argv[1]), Path(sys.argv[2])
    (root / "images").mkdir(parents=True); (root / "labels").mkdir()
    (root / "classes.txt").write_text("0 bg\\n1 a\\n2 b\\n")
    lab = np.zeros((side, side), np.uint8); lab[: side // 2, : side // 2] = 1; lab[side // 2:, side // 2:] = 2
    for i in range(4):
        Image.fromarray(lab).save(root / "labels" / f"{i}.png")
        Image.fromarray(np.full((side, side, 3), 40 * i, np.uint8)).save(root / "images" / f"{i}.jpg")
    del lab
    os.environ["FEWSEG_CACHE"] = str(root / "cache")
    import fewseg
    from fewseg.data.sources.labelmap import LabelMapDataset
    from fewseg.engine.evaluator import MetaLearner, evaluate
    ds = LabelMapDataset(root, split="all", image_size=32)
    algo = fewseg.create_algorithm("maml", fewseg.create_model("seed-cnn", width=4), inner_steps=1, inner_lr=0.1)
    episodes = fewseg.EpisodeSampler(ds, shots=1, queries=1, seed=0).fixed_episodes(2)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    evaluate(MetaLearner(algo), episodes, full_resolution=ds.full_resolution)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
''')


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in kilobytes is Linux's")
def test_full_resolution_evaluation_memory_is_linear_in_the_image(tmp_path):
    """Scoring a 3000 x 3000 label map at its own resolution stays under 40 bytes per pixel above the baseline
    (measured: ~16-24 B/px; at fewseg's 64-megapixel cap that is under 2.6 GB)."""
    side = 3000
    script = tmp_path / "memory.py"
    script.write_text(MEMORY_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    out = subprocess.run([sys.executable, str(script), str(side), str(tmp_path / "data")], env=env, check=False,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    grown = int(out.stdout.strip().splitlines()[-1])
    assert grown < 40 * side * side, f"{grown / side / side:.1f} bytes per pixel"
