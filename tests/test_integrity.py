"""Checkpoint integrity (issue 28): meta.json records the SHA-256 of each file beside it and the values those files
describe; loading names the file that does not match, checks meta.json's iteration and image size against the
weights and optimiser state, and still loads an old checkpoint without the record (with a warning). The same for
adapted models (``save`` format). Each CLI case is one line and exit 2."""
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_exit_2, run_cli

import fewseg
from fewseg.engine.checkpoint import load_checkpoint, save_checkpoint
from fewseg.engine.integrity import file_sha256
from fewseg.errors import CheckpointError
from fewseg.loading import load_algorithm


def copy_of(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(run, dst)
    return dst


def flip_weights_bit(path: Path) -> None:
    """Flip the lowest bit of the first tensor byte of a safetensors file: it still parses, every value finite."""
    blob = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(blob[:8], "little")
    blob[start] ^= 1
    path.write_bytes(bytes(blob))


def flip_optimizer_bit(path: Path) -> None:
    """Flip a bit inside the largest tensor stored in a torch.save zip: it still loads, only a value changed."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    blob = bytearray(path.read_bytes())
    name_len, extra_len = (int.from_bytes(blob[info.header_offset + k:info.header_offset + k + 2], "little")
                           for k in (26, 28))
    data = info.header_offset + 30 + name_len + extra_len
    blob[data + info.file_size // 2] ^= 1
    path.write_bytes(bytes(blob))
    torch.load(path, weights_only=True)  # still readable: only the hash can tell


def edit_meta(ckpt: Path, edit) -> None:
    meta = json.loads((ckpt / "meta.json").read_text())
    edit(meta)
    (ckpt / "meta.json").write_text(json.dumps(meta))


def drop_record(ckpt: Path) -> None:
    """Make ``ckpt`` a checkpoint as fewseg wrote it before the integrity record."""
    edit_meta(ckpt, lambda m: m.pop("integrity"))


# --- the record -------------------------------------------------------------------------------------------
def test_a_save_records_each_files_sha256_and_the_values_they_describe(tmp_path):
    meta = {"iteration": 4, "preprocessing": {"image_size": 16}, "integrity": {"stale": True}}
    save_checkpoint(tmp_path / "ck", {"w": torch.ones(3)}, meta, {"step": 4})
    written = json.loads((tmp_path / "ck" / "meta.json").read_text())
    assert written["integrity"] == {
        "sha256": {name: file_sha256(tmp_path / "ck" / name) for name in ("weights.safetensors", "optimizer.pt")},
        "describes": {"iteration": 4, "preprocessing.image_size": 16}}
    assert meta["integrity"] == {"stale": True}  # the caller's dict untouched; a stale record is replaced
    load_checkpoint(tmp_path / "ck")


def test_a_deleted_or_added_file_is_refused(tmp_path):
    save_checkpoint(tmp_path / "ck", {"w": torch.ones(3)}, {}, {"x": 1})
    (tmp_path / "ck" / "optimizer.pt").unlink()
    with pytest.raises(CheckpointError, match="optimizer.pt is recorded in .*meta.json but missing"):
        load_checkpoint(tmp_path / "ck")
    save_checkpoint(tmp_path / "ck2", {"w": torch.ones(3)}, {})
    torch.save({"x": 1}, tmp_path / "ck2" / "optimizer.pt")
    with pytest.raises(CheckpointError, match="optimizer.pt is not in the SHA-256 record"):
        load_checkpoint(tmp_path / "ck2")


def test_a_malformed_record_is_one_line(tmp_path):
    save_checkpoint(tmp_path / "ck", {"w": torch.ones(3)}, {})
    for bad in (None, [], {"sha256": {"weights.safetensors": "abc"}}, {"sha256": {}, "describes": 3}):
        edit_meta(tmp_path / "ck", lambda m, bad=bad: m.update(integrity=bad))
        with pytest.raises(CheckpointError, match="'integrity' must be") as info:
            load_checkpoint(tmp_path / "ck")
        assert "\n" not in str(info.value)


# --- a meta-training run ----------------------------------------------------------------------------------
def test_a_flipped_bit_in_the_weights_names_the_file(run, tmp_path, capsys):
    copy = copy_of(run, tmp_path)
    weights = copy / "checkpoints" / "best" / "weights.safetensors"
    flip_weights_bit(weights)
    with pytest.raises(CheckpointError) as info:
        load_algorithm(copy)
    assert str(weights) in str(info.value) and "does not match the SHA-256" in str(info.value)
    line = one_line_exit_2(*run_cli(["evaluate", "--checkpoint", copy, "--episodes", "1"], capsys), warnings_allowed=True)
    assert str(weights) in line


def test_a_flipped_bit_in_the_optimiser_state_stops_resume(run, tmp_path, capsys):
    copy = copy_of(run, tmp_path)
    state = copy / "checkpoints" / "last" / "optimizer.pt"
    flip_optimizer_bit(state)
    line = one_line_exit_2(*run_cli(["train", "--no-progress", "--resume", copy], capsys), warnings_allowed=True)
    assert f"{state} does not match the SHA-256 recorded in" in line


def test_an_edited_iteration_is_refused_with_or_without_the_record(run, tmp_path, capsys):
    copy = copy_of(run, tmp_path)
    last = copy / "checkpoints" / "last"
    saved = json.loads((last / "meta.json").read_text())["iteration"]
    edit_meta(last, lambda m: m.update(iteration=saved + 5))
    line = one_line_exit_2(*run_cli(["train", "--no-progress", "--resume", copy], capsys), warnings_allowed=True)
    assert f"'iteration' is {saved + 5} but the files beside it were saved with {saved}" in line
    drop_record(last)  # an old checkpoint: the optimiser state's step count still tells
    with pytest.warns(UserWarning, match="no SHA-256 record"), \
            pytest.raises(CheckpointError, match=f"has taken {saved} steps, one per iteration"):
        load_checkpoint(last)


def test_an_edited_image_size_is_refused_with_or_without_the_record(run, tmp_path, capsys):
    copy = copy_of(run, tmp_path)
    best = copy / "checkpoints" / "best"
    edit_meta(best, lambda m: m["preprocessing"].update(image_size=25))   # a depth-2 U-Net takes even sides
    with pytest.raises(CheckpointError, match="'preprocessing.image_size' is 25 but the files beside it were saved"):
        load_algorithm(copy)
    drop_record(best)
    with pytest.warns(UserWarning, match="no SHA-256 record"), \
            pytest.raises(CheckpointError, match=r"'preprocessing.image_size' 25 does not fit its network.*25x25"):
        load_algorithm(copy)
    support = tmp_path / "support"
    support.mkdir()
    rng = np.random.default_rng(0)
    from PIL import Image
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(support / "a.jpg")
    Image.fromarray(np.eye(24, dtype=np.uint8) * 255).save(support / "a.png")
    line = one_line_exit_2(*run_cli(["adapt", "--checkpoint", copy, "--support", support, "--save-adapted",
                                     tmp_path / "cls"], capsys), warnings_allowed=True)
    assert "'preprocessing.image_size' 25 does not fit its network" in line
    for size in ("abc", 10**7):
        edit_meta(best, lambda m, size=size: m["preprocessing"].update(image_size=size))
        with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="'preprocessing.image_size'"):
            load_algorithm(copy)


def test_an_old_checkpoint_without_the_record_loads_with_a_note(run, tmp_path):
    copy = copy_of(run, tmp_path)
    for name in ("best", "last"):
        drop_record(copy / "checkpoints" / name)
    with pytest.warns(UserWarning, match=r"checkpoint .*best has no SHA-256 record of its files"):
        seg = fewseg.load(copy)
    assert seg.preprocessing.image_size == 24
    with pytest.warns(UserWarning, match="no SHA-256 record"):
        assert load_checkpoint(copy / "checkpoints" / "last").meta["iteration"] == 2


def test_an_old_checkpoint_with_an_inconsistent_optimiser_state_is_refused(run, tmp_path):
    """Without the record, the optimiser state is still checked against itself and the weights (a renamed key or a
    wrong shape used to fail mid-training as an internal error)."""
    copy = copy_of(run, tmp_path)
    last = copy / "checkpoints" / "last"
    drop_record(last)
    original = torch.load(last / "optimizer.pt", weights_only=True)
    edits = {"a renamed key": lambda s: s["optimizer"]["state"][0].update(exp_avx=s["optimizer"]["state"][0].pop("exp_avg")),
             "a wrong shape": lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(4, 3, 1, 3))}
    for name, edit in edits.items():
        state = {"optimizer": {"state": {k: dict(v) for k, v in original["optimizer"]["state"].items()},
                               "param_groups": original["optimizer"]["param_groups"]},
                 "sampler_rng": original["sampler_rng"]}
        edit(state)
        torch.save(state, last / "optimizer.pt")
        with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="optimizer.pt: the optimiser state") as info:
            load_checkpoint(last)
        assert "\n" not in str(info.value), name


# --- adapted models ---------------------------------------------------------------------------------------
@pytest.fixture
def adapted_dir(tmp_path):
    seg = fewseg.Segmenter.untrained("unet", {"depth": 2, "width": 4}, image_size=16, steps=1)
    return seg.adapt([torch.rand(3, 16, 16)], [torch.ones(16, 16)]).save(tmp_path / "adapted")


def test_an_adapted_model_records_and_checks_its_weights(adapted_dir, tmp_path, capsys):
    record = json.loads((adapted_dir / "meta.json").read_text())["integrity"]
    assert record["sha256"] == {"weights.safetensors": file_sha256(adapted_dir / "weights.safetensors")}
    assert record["describes"] == {"preprocessing.image_size": 16}
    fewseg.load_adapted(adapted_dir)
    flip_weights_bit(adapted_dir / "weights.safetensors")
    with pytest.raises(CheckpointError, match="weights.safetensors does not match the SHA-256"):
        fewseg.load_adapted(adapted_dir)
    (tmp_path / "images").mkdir()
    from PIL import Image
    Image.new("RGB", (20, 20)).save(tmp_path / "images" / "a.png")
    line = one_line_exit_2(*run_cli(["predict", "--adapted", adapted_dir, "--images", tmp_path / "images",
                                     "--output", tmp_path / "out"], capsys), warnings_allowed=True)
    assert str(adapted_dir / "weights.safetensors") in line


def test_an_adapted_models_edited_image_size_is_refused(adapted_dir):
    edit_meta(adapted_dir, lambda m: m["preprocessing"].update(image_size=17))
    with pytest.raises(CheckpointError, match="'preprocessing.image_size' is 17 but the files beside it"):
        fewseg.load_adapted(adapted_dir)
    drop_record(adapted_dir)
    with pytest.warns(UserWarning, match="adapted model .* has no SHA-256 record"), \
            pytest.raises(CheckpointError, match="'preprocessing.image_size' 17 does not fit its network 'unet'"):
        fewseg.load_adapted(adapted_dir)


def test_an_old_adapted_model_loads_with_a_note(adapted_dir):
    drop_record(adapted_dir)
    with pytest.warns(UserWarning, match="has no SHA-256 record"):
        adapted = fewseg.load_adapted(adapted_dir)
    assert adapted.predict(np.zeros((16, 16, 3), np.uint8)).mask.shape == (16, 16)
