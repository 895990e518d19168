"""Safe loading, proven: malicious pickles in every file fewseg reads (a checkpoint's weights, meta.json and
optimizer.pt; the cached transfer model; a saved adapted model) never execute -- each payload would create a marker
file, and none exists afterwards -- and tampered or truncated safetensors and JSON give one-line errors."""
import io
import json
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import tiny_config, tiny_eval

import fewseg
from fewseg.cli import main
from fewseg.config import config_from_dict
from fewseg.engine.checkpoint import load_checkpoint
from fewseg.engine.trainer import Trainer, resume_trainer
from fewseg.errors import CheckpointError, FewsegError

SRC = Path(__file__).parents[1] / "src" / "fewseg"
RUN = tiny_config(2, train={"val_episodes": 1}, eval=tiny_eval(1, transfer_images=2))


class OpenFile:
    """Unpickling calls open(marker, "w"): the file appears."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class System:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class Exec:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


class TorchRebuild:
    """A payload hidden behind a name torch's own format uses."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w')",))


PAYLOADS = [OpenFile, System, Exec, TorchRebuild]


def malicious_blobs(marker: Path) -> dict[str, bytes]:
    """Every way to put a code-running pickle in a file: torch's zip format, bare pickles of protocols 0-5, a zip
    whose data.pkl is swapped, the payload nested deep in an otherwise plain optimizer state."""
    out = {}
    for payload in PAYLOADS:
        evil = payload(marker)
        buf = io.BytesIO()
        torch.save({"optimizer": {"state": {}, "param_groups": []}, "sampler_rng": evil}, buf)
        out[f"{payload.__name__}: torch zip, nested"] = buf.getvalue()
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            out[f"{payload.__name__}: bare pickle protocol {protocol}"] = pickle.dumps({"optimizer": evil},
                                                                                     protocol=protocol)
    # a legitimate torch file whose data.pkl is replaced by a malicious one
    clean = io.BytesIO()
    torch.save({"x": torch.ones(2)}, clean)
    src, dst = zipfile.ZipFile(io.BytesIO(clean.getvalue())), io.BytesIO()
    with zipfile.ZipFile(dst, "w") as z:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                data = pickle.dumps(System(marker), protocol=2)
            z.writestr(info, data)
    out["swapped data.pkl"] = dst.getvalue()
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    Trainer(config_from_dict(RUN, [f"output={out}"]), progress=False).fit()
    return out


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a stored pickle ran code"


def test_the_payloads_are_real(tmp_path):
    """Loaded unsafely, every payload creates its marker: the tests below would notice an unsafe load."""
    for payload in PAYLOADS:
        marker = tmp_path / f"proof-{payload.__name__}"
        result = pickle.loads(pickle.dumps(payload(marker)))
        if hasattr(result, "close"):
            result.close()
        assert marker.exists(), payload.__name__


def copy_of(run, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(run, dst)
    return dst


def one_line(exc: BaseException) -> str:
    assert isinstance(exc, FewsegError)
    text = str(exc)
    assert "\n" not in text and "weights_only" not in text and "Traceback" not in text, text
    return text


def test_malicious_optimizer_files_are_refused_and_never_run(run, tmp_path, marker):
    copy = copy_of(run, tmp_path)
    opt = copy / "checkpoints" / "last" / "optimizer.pt"
    for name, blob in malicious_blobs(marker).items():
        opt.write_bytes(blob)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(opt.parent)
        text = one_line(info.value)
        assert str(opt) in text, name
        assert re.search(r"refers to code \([\w.]+\), which fewseg never loads or runs|not a plain-data pickle|"
                         r"not plain data", text), (name, text)
        with pytest.raises(CheckpointError):
            resume_trainer(copy, progress=False)
        assert not marker.exists(), name


def test_the_refusal_names_the_code_plainly(run, tmp_path, marker):
    copy = copy_of(run, tmp_path)
    opt = copy / "checkpoints" / "last" / "optimizer.pt"
    opt.write_bytes(pickle.dumps({"optimizer": System(marker)}, protocol=2))
    with pytest.raises(CheckpointError, match=r"refers to code \((posix|nt)\.system\), which fewseg never loads"):
        load_checkpoint(opt.parent)


@pytest.mark.parametrize("target", ["weights.safetensors", "meta.json"])
def test_pickles_in_place_of_weights_or_metadata_are_refused(run, tmp_path, marker, target):
    copy = copy_of(run, tmp_path)
    for name in ("best", "last"):
        for blob in list(malicious_blobs(marker).values())[:6]:
            (copy / "checkpoints" / name / target).write_bytes(blob)
            with pytest.raises(CheckpointError) as info:
                load_checkpoint(copy / "checkpoints" / name)
            assert target in one_line(info.value)


def test_every_command_refuses_a_poisoned_run_in_one_line(run, tmp_path, marker, capsys):
    copy = copy_of(run, tmp_path)
    for name in ("best", "last"):
        (copy / "checkpoints" / name / "optimizer.pt").write_bytes(pickle.dumps({"x": System(marker)}, protocol=2))
        (copy / "checkpoints" / name / "weights.safetensors").write_bytes(pickle.dumps(Exec(marker)))
    for args in (["evaluate", "--checkpoint", copy], ["train", "--no-progress", "--resume", copy],
                 ["adapt", "--checkpoint", copy, "--support", tmp_path, "--images", tmp_path, "--output",
                  tmp_path / "o"]):
        assert main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and "weights_only" not in err, err


def test_a_poisoned_transfer_cache_is_refused(run, tmp_path, marker):
    from fewseg.baselines.context import transfer_model
    from fewseg.engine.builders import build_dataset
    from fewseg.engine.checkpoint import save_checkpoint
    copy = copy_of(run, tmp_path)
    cfg = config_from_dict(RUN, [f"output={copy}"])
    cache = copy / "checkpoints" / "transfer"
    save_checkpoint(cache, {"w": torch.zeros(1)}, {"kind": "transfer"})
    train_set = build_dataset(cfg.data, "train", cfg.seed)
    for target, blob in (("weights.safetensors", pickle.dumps(OpenFile(marker))),
                         ("meta.json", pickle.dumps(Exec(marker))),
                         ("optimizer.pt", pickle.dumps({"x": System(marker)}, protocol=2))):
        save_checkpoint(cache, {"w": torch.zeros(1)}, {"kind": "transfer"}, {"x": 1})
        (cache / target).write_bytes(blob)
        with pytest.raises(CheckpointError) as info:
            transfer_model(cfg, train_set, copy, "cpu", progress=False)
        assert target in one_line(info.value)


@pytest.fixture
def adapted_dir(tmp_path):
    seg = fewseg.Segmenter.untrained("seed-cnn", {"width": 4}, image_size=16, steps=1)
    adapted = seg.adapt([torch.rand(3, 16, 16)], [torch.ones(16, 16)])
    path = adapted.save(tmp_path / "adapted")
    fewseg.load_adapted(path)  # the clean one loads
    return path


def refusal(path: Path) -> str | None:
    """The one-line error :func:`fewseg.load_adapted` gives on ``path``, or None when it loads."""
    try:
        fewseg.load_adapted(path)
    except FewsegError as exc:
        return one_line(exc)
    return None


@pytest.mark.parametrize("target", ["weights.safetensors", "meta.json"])
def test_pickles_in_a_saved_adapted_model_are_refused(adapted_dir, marker, target):
    path, loaded = adapted_dir, []
    for name, blob in list(malicious_blobs(marker).items())[:8]:
        (path / target).write_bytes(blob)
        text = refusal(path)
        if text is None:
            loaded.append(name)
        else:
            assert f"{path / target} (" in text, (name, text)  # refused for that file: it does not parse
    assert loaded == [], f"pickles in place of {target} were read without error: {loaded}"


def truncations(blob: bytes) -> list[bytes]:
    return [blob[:n] for n in sorted({0, 1, 7, 8, 9, 16, len(blob) // 3, len(blob) // 2, len(blob) - 1})]


def tampered_safetensors(blob: bytes) -> dict[str, bytes]:
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    out = {f"truncated to {len(b)} bytes": b for b in truncations(blob)}
    out["header length beyond the file"] = (10**12).to_bytes(8, "little") + blob[8:]
    out["header length zero"] = (0).to_bytes(8, "little") + blob[8:]
    out["header not JSON"] = n.to_bytes(8, "little") + b"{" * n + blob[8 + n:]
    name = next(k for k in header if k != "__metadata__")
    for label, edit in {"offsets past the data": {"data_offsets": [0, 10**9]},
                        "shape not matching the bytes": {"shape": [10**6]},
                        "unknown dtype": {"dtype": "Q99"},
                        "negative offsets": {"data_offsets": [-4, 4]}}.items():
        h = json.loads(json.dumps(header))
        h[name].update(edit)
        text = json.dumps(h).encode()
        out[label] = len(text).to_bytes(8, "little") + text + blob[8 + n:]
    return out


def test_tampered_or_truncated_checkpoint_files_are_one_line(run, tmp_path, capsys):
    """Every case is refused by the reader, naming the file, and by ``fewseg evaluate`` in one line."""
    copy = copy_of(run, tmp_path)
    loaded = []
    for name in ("best", "last"):
        ck = copy / "checkpoints" / name
        weights, meta, opt = ((ck / f).read_bytes() for f in ("weights.safetensors", "meta.json", "optimizer.pt"))
        cases = [("weights.safetensors", label, b) for label, b in tampered_safetensors(weights).items()]
        cases += [("meta.json", f"truncated to {len(b)} bytes", b) for b in truncations(meta)]
        cases += [("optimizer.pt", f"truncated to {len(b)} bytes", b) for b in truncations(opt)]
        cases += [("meta.json", repr(b[:12]), b) for b in (b"[]", b"null", b"\xff\xfe\x00", b"[" * 100_000 + b"]" * 100_000,
                                                         b'{"kind": "meta", "a": NaN}')]
        for target, label, blob in cases:
            (ck / target).write_bytes(blob)
            try:
                load_checkpoint(ck)
            except FewsegError as exc:
                assert f"{ck / target}" in one_line(exc), (target, label, str(exc))
            else:
                loaded.append(f"{name}/{target}: {label}")
            rc = main(["evaluate", "--checkpoint", str(ck), "--episodes", "1", "--output", str(tmp_path / "e.json")])
            err = capsys.readouterr().err
            assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, (target, label, rc, err)
            (ck / "weights.safetensors").write_bytes(weights)
            (ck / "meta.json").write_bytes(meta)
            (ck / "optimizer.pt").write_bytes(opt)
    assert loaded == [], f"tampered checkpoint files read without error: {loaded}"


def test_tampered_adapted_model_files_are_one_line(adapted_dir):
    path = adapted_dir
    weights, meta = (path / "weights.safetensors").read_bytes(), (path / "meta.json").read_bytes()
    cases = [("weights.safetensors", label, b) for label, b in tampered_safetensors(weights).items()]
    cases += [("meta.json", f"truncated to {len(b)} bytes", b) for b in truncations(meta)]
    cases += [("meta.json", "a JSON list", b"[]"), ("meta.json", "not UTF-8", b"\xff\xfe")]
    loaded = []
    for target, label, blob in cases:
        (path / target).write_bytes(blob)
        text = refusal(path)
        if text is None:
            loaded.append(f"{target}: {label}")
        elif label == "a JSON list":  # valid JSON, not the metadata of an adapted model
            assert text == f"{path} is not an adapted model (kind=None)", text
        else:
            assert f"{path / target} (" in text, (target, label, text)
        (path / "weights.safetensors").write_bytes(weights)
        (path / "meta.json").write_bytes(meta)
    assert loaded == [], f"tampered files read without error: {loaded}"


def test_no_reader_in_fewseg_can_run_stored_code():
    """Every torch.load passes weights_only=True; no pickle, marshal, unsafe YAML or numpy pickle load exists."""
    offenders = []
    for py in SRC.rglob("*.py"):
        text = py.read_text(encoding="utf-8")
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in call.group(1):
                offenders.append(f"{py}: {call.group(0)}")
        for pattern in (r"pickle\.loads?\(", r"marshal\.loads?\(", r"yaml\.load\(", r"yaml\.unsafe_load",
                        r"yaml\.full_load", r"allow_pickle\s*=\s*True", r"dill\.", r"joblib\.load"):
            offenders += [f"{py}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert offenders == []
