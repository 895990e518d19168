"""Checkpoints: round trip, safety against code in files, atomic replacement."""

import json
import os
import pickle
import signal
import sys

import pytest
import torch

from fewseg.engine import checkpoint as ckpt_mod
from fewseg.engine.checkpoint import (
    Checkpoint,
    delay_keyboard_interrupt,
    load_checkpoint,
    save_checkpoint,
)
from fewseg.errors import CheckpointError


def sample_tensors():
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    return {
        "f32": base,
        "view_of_f32": base[1],          # shares storage with "f32"
        "transposed": base.t(),          # shared and non-contiguous
        "f16": torch.randn(5, generator=torch.Generator().manual_seed(0)).half(),
        "bf16": torch.linspace(-1, 1, 4).bfloat16(),
        "f64": torch.tensor([1e-300, 2.5], dtype=torch.float64),
        "i64": torch.tensor([-3, 2 ** 40]),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(7.0),
        "param": torch.nn.Parameter(torch.ones(2)),
    }


def test_round_trip_tensors_and_meta(tmp_path):
    tensors = sample_tensors()
    meta = {"iteration": 12, "config": {"lr": 0.001, "name": "x"}, "last": None}
    save_checkpoint(tmp_path / "ck", tensors, meta)
    ck = load_checkpoint(tmp_path / "ck")
    assert isinstance(ck, Checkpoint) and ck.path == tmp_path / "ck"
    assert set(ck.tensors) == set(tensors)
    for k, v in tensors.items():
        assert ck.tensors[k].dtype == v.dtype, k
        assert torch.equal(ck.tensors[k], v.detach()), k
    assert {k: ck.meta[k] for k in meta} == meta
    versions = ck.meta["versions"]
    assert set(versions) == {"fewseg", "torch", "python"}
    assert versions["torch"] == torch.__version__
    assert versions["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert "versions" not in meta  # caller's dict untouched
    assert ck.optimizer_state is None
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # no temp dirs left behind
    assert sorted(os.listdir(tmp_path / "ck")) == ["meta.json", "weights.safetensors"]


def test_adam_state_and_generator_state_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(4, 3)).pow(2).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(123)
    torch.rand(3, generator=gen)
    extra = {"optimizer": opt.state_dict(), "sampler_rng": gen.get_state()}
    save_checkpoint(tmp_path / "ck", model.state_dict(), {"iteration": 1}, extra)

    ck = load_checkpoint(tmp_path / "ck")
    fresh = torch.nn.Linear(3, 2)
    fresh.load_state_dict(ck.tensors)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.5)
    fresh_opt.load_state_dict(ck.optimizer_state["optimizer"])
    a, b = opt.state_dict(), fresh_opt.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(a["state"][i][key], b["state"][i][key])
    g2 = torch.Generator()
    g2.set_state(ck.optimizer_state["sampler_rng"])
    assert torch.equal(torch.rand(5, generator=g2), torch.rand(5, generator=gen))
    assert sorted(os.listdir(tmp_path / "ck")) == ["meta.json", "optimizer.pt", "weights.safetensors"]
    # both optimisers take the same next step
    x = torch.randn(4, 3)
    for m, o in ((model, opt), (fresh, fresh_opt)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(p, q)


def test_garbage_weights_file_names_it(tmp_path):
    save_checkpoint(tmp_path / "ck", {"w": torch.ones(2)}, {})
    weights = tmp_path / "ck" / "weights.safetensors"
    weights.write_bytes(b"\x00garbage, not safetensors" * 3)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "ck")
    msg = str(info.value)
    assert str(weights) in msg and "\n" not in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_garbage_meta_names_it(tmp_path):
    save_checkpoint(tmp_path / "ck", {"w": torch.ones(2)}, {})
    (tmp_path / "ck" / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="meta.json"):
        load_checkpoint(tmp_path / "ck")


def test_missing_directory_and_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere")
    save_checkpoint(tmp_path / "ck", {"w": torch.ones(2)}, {})
    (tmp_path / "ck" / "weights.safetensors").unlink()
    with pytest.raises(CheckpointError, match="weights.safetensors"):
        load_checkpoint(tmp_path / "ck")


def test_overwrite_replaces_everything(tmp_path):
    save_checkpoint(tmp_path / "ck", {"w": torch.ones(2)}, {"n": 1}, {"opt": torch.zeros(1)})
    save_checkpoint(tmp_path / "ck", {"v": torch.full((3,), 2.0)}, {"n": 2})
    ck = load_checkpoint(tmp_path / "ck")
    assert list(ck.tensors) == ["v"] and ck.meta["n"] == 2
    assert ck.optimizer_state is None  # the old optimizer.pt went with the old checkpoint
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_failed_swap_keeps_old_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "ck", {"w": torch.ones(2)}, {"n": 1})
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        if not calls:
            calls.append(src)
            raise OSError("disk on fire")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk on fire"):
        save_checkpoint(tmp_path / "ck", {"w": torch.zeros(2)}, {"n": 2})
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.meta["n"] == 1 and torch.equal(ck.tensors["w"], torch.ones(2))
    # the next save goes through and cleans up
    save_checkpoint(tmp_path / "ck", {"w": torch.zeros(2)}, {"n": 3})
    assert load_checkpoint(tmp_path / "ck").meta["n"] == 3
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_crash_between_rename_and_replace_is_recovered(tmp_path):
    """A process killed (no rollback) after moving the old checkpoint aside: load finds <dir>.old-<pid>."""
    save_checkpoint(tmp_path / "ck", {"w": torch.ones(2)}, {"n": 1})
    dead_pid = 2 ** 22 + 12345  # above Linux's pid_max: never a live process
    os.rename(tmp_path / "ck", tmp_path / f"ck.old-{dead_pid}")  # what the swap does first
    half = tmp_path / f"ck.tmp-{dead_pid}"  # the new checkpoint, half written
    half.mkdir()
    (half / "weights.safetensors").write_bytes(b"\x00" * 5)
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.meta["n"] == 1 and torch.equal(ck.tensors["w"], torch.ones(2))
    assert ck.path.name == f"ck.old-{dead_pid}"
    # the next save goes through and clears the leftovers
    save_checkpoint(tmp_path / "ck", {"w": torch.zeros(2)}, {"n": 2})
    assert load_checkpoint(tmp_path / "ck").meta["n"] == 2
    assert sorted(os.listdir(tmp_path)) == ["ck"]


class Evil:
    """Unpickling this would run open(marker, "w") and create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_optimizer_file_is_refused_without_running_code(tmp_path):
    save_checkpoint(tmp_path / "ck", {"w": torch.ones(2)}, {}, {"step": 1})
    marker = tmp_path / "pwned"
    opt_file = tmp_path / "ck" / "optimizer.pt"
    assert opt_file.is_file()
    torch.save({"optimizer": Evil(marker)}, opt_file)  # torch's zip format
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "ck")
    assert str(opt_file) in str(info.value) and "\n" not in str(info.value)
    assert "refers to code" in str(info.value) and "\x1b" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert not marker.exists()
    opt_file.write_bytes(pickle.dumps({"optimizer": Evil(marker)}, protocol=2))  # a bare pickle
    with pytest.raises(CheckpointError, match="optimizer.pt.*refers to code"):
        load_checkpoint(tmp_path / "ck")
    assert not marker.exists()
    opt_file.write_bytes(b"\x80\x02garbage")  # not a pickle at all
    with pytest.raises(CheckpointError, match="optimizer.pt"):
        load_checkpoint(tmp_path / "ck")
    # the payload is real: an unsafe load would have created a file
    proof = tmp_path / "proof"
    torch.save({"optimizer": Evil(proof)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)["optimizer"].close()  # the file it opened
    assert proof.exists()


def test_meta_must_be_json(tmp_path):
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "ck", {"w": torch.ones(1)}, {"bad": object()})
    assert not (tmp_path / "ck").exists() and os.listdir(tmp_path) == []


def test_meta_json_is_readable_text(tmp_path):
    save_checkpoint(tmp_path / "ck", {"w": torch.ones(1)}, {"kind": "meta"})
    assert json.loads((tmp_path / "ck" / "meta.json").read_text())["kind"] == "meta"


def test_delay_keyboard_interrupt_defers_sigint():
    before = signal.getsignal(signal.SIGINT)
    reached_end = []
    with pytest.raises(KeyboardInterrupt), delay_keyboard_interrupt():
        os.kill(os.getpid(), signal.SIGINT)
        reached_end.append(True)
    assert reached_end == [True]
    assert signal.getsignal(signal.SIGINT) is before
    with delay_keyboard_interrupt():  # no signal: nothing raised
        pass
    assert signal.getsignal(signal.SIGINT) is before


def test_delay_keyboard_interrupt_off_main_thread_is_noop():
    import threading

    errors = []

    def body():
        try:
            with delay_keyboard_interrupt():
                pass
        except Exception as exc:  # noqa: BLE001  # pragma: no cover
            errors.append(exc)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert errors == []


def test_incomplete_old_copy_is_not_used(tmp_path):
    (tmp_path / "ck.old-1").mkdir()
    (tmp_path / "ck.old-1" / "weights.safetensors").write_bytes(b"")  # no meta.json
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "ck")


def test_ctrl_c_during_swap_finishes_the_save_then_raises(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "ck", {"w": torch.ones(2)}, {"n": 1})
    real_replace = os.replace

    def interrupted_replace(src, dst):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C right in the middle of the swap
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ck", {"w": torch.zeros(2)}, {"n": 2})
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.meta["n"] == 2 and torch.equal(ck.tensors["w"], torch.zeros(2))
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # the old copy was removed inside the guarded block


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_are_saved_on_cpu(tmp_path):  # pragma: no cover - GPU only
    save_checkpoint(tmp_path / "ck", {"w": torch.arange(3.0, device="cuda")}, {})
    w = load_checkpoint(tmp_path / "ck").tensors["w"]
    assert w.device.type == "cpu" and w.tolist() == [0.0, 1.0, 2.0]
