"""fewseg adapt --save-adapted and fewseg predict: masks, overlays, results.json (IoU), odd folders, Ctrl-C."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from userpath import labelled, tiny_run, write_images, write_support

from fewseg.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("predict_run"))


@pytest.fixture(scope="module")
def saved(run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("saved")
    support = write_support(tmp / "support")
    assert main(["adapt", "--checkpoint", str(run), "--support", str(support), "--save-adapted", str(tmp / "cls"),
                 "--steps", "3"]) == 0
    return tmp / "cls"


def test_predict_writes_masks_overlays_and_results_with_iou(saved, tmp_path, capsys):
    write_images(tmp_path / "images", sizes=((20, 30), (41, 37), (64, 48)), masks=tmp_path / "truth")
    (tmp_path / "truth" / "q2.png").unlink()                                    # one image without a mask
    assert main(["predict", "--adapted", str(saved), "--images", str(tmp_path / "images"),
                 "--output", str(tmp_path / "out"), "--masks", str(tmp_path / "truth")]) == 0
    err = capsys.readouterr().err
    assert "segmenting" in err and "3/3" in err                                  # the progress bar
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    assert record["n_images"] == 3 and record["n_scored"] == 2 and record["adaptation"]["steps"] == 3
    rows = {r["image"]: r for r in record["images"]}
    for name, (h, w) in {"q0.png": (20, 30), "q1.png": (41, 37), "q2.png": (64, 48)}.items():
        row = rows[name]
        mask = np.asarray(Image.open(tmp_path / "out" / row["mask"]))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        assert Image.open(tmp_path / "out" / row["overlay"]).size == (w, h)
        assert row["foreground_fraction"] == pytest.approx((mask > 0).mean(), abs=1e-6)
        assert 0.5 <= row["mean_confidence"] <= 1.0
    assert "iou" not in rows["q2.png"] and 0.0 <= rows["q0.png"]["iou"] <= 1.0
    truth = np.asarray(Image.open(tmp_path / "truth" / "q0.png")) > 0
    pred = np.asarray(Image.open(tmp_path / "out" / "masks" / "q0.png")) > 0
    assert rows["q0.png"]["iou"] == pytest.approx((pred & truth).sum() / max((pred | truth).sum(), 1), abs=1e-6)
    assert record["mean_iou"] == pytest.approx(np.mean([rows["q0.png"]["iou"], rows["q1.png"]["iou"]]), abs=1e-6)


def test_threshold_changes_the_masks(saved, tmp_path):
    write_images(tmp_path / "images")
    fractions = []
    for t in ("0.05", "0.95"):
        assert main(["predict", "--adapted", str(saved), "--images", str(tmp_path / "images"), "--output",
                     str(tmp_path / t), "--threshold", t, "--no-progress"]) == 0
        record = json.loads((tmp_path / t / "results.json").read_text())
        assert record["threshold"] == float(t)
        fractions.append(sum(r["foreground_fraction"] for r in record["images"]))
    assert fractions[0] >= fractions[1]


def test_images_sharing_a_stem_keep_both_masks(saved, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(labelled(rng, 20, 30)[0]).save(images / "cat.jpg")
    Image.fromarray(labelled(rng, 25, 35)[0]).save(images / "cat.png")
    Image.fromarray(labelled(rng, 22, 22)[0]).save(images / "dog.png")
    assert main(["predict", "--adapted", str(saved), "--images", str(images), "--output", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    masks = sorted(p.name for p in (tmp_path / "out" / "masks").iterdir())
    assert masks == ["cat.jpg.png", "cat.png.png", "dog.png"]
    assert Image.open(tmp_path / "out" / "masks" / "cat.png.png").size == (35, 25)


def test_adapt_with_masks_subfolder_uses_both_same_stem_images(run, tmp_path):
    support = tmp_path / "support"
    (support / "masks").mkdir(parents=True)
    rng = np.random.default_rng(1)
    img_a, mask = labelled(rng, 30, 30)
    Image.fromarray(img_a).save(support / "cat.jpg")
    Image.fromarray(img_a).save(support / "cat.png")
    Image.fromarray(mask).save(support / "masks" / "cat.png")
    assert main(["adapt", "--checkpoint", str(run), "--support", str(support), "--save-adapted",
                 str(tmp_path / "cls")]) == 0
    info = json.loads((tmp_path / "cls" / "meta.json").read_text())["adaptation"]
    assert info["shots"] == 2 and sorted(info["support"]) == ["cat.jpg", "cat.png"]


def test_adapt_warns_above_ten_support_images_and_needs_something_to_do(run, tmp_path, capsys):
    support = write_support(tmp_path / "support", n=11, size=(16, 16))
    assert main(["adapt", "--checkpoint", str(run), "--support", str(support), "--save-adapted",
                 str(tmp_path / "cls"), "--steps", "1"]) == 0
    err = capsys.readouterr().err
    assert "fewseg: warning: 11 support images: fewseg models are meta-trained on 1-10" in err
    assert main(["adapt", "--checkpoint", str(run), "--support", str(support)]) == 2
    assert "nothing to do" in capsys.readouterr().err


def test_predict_errors_are_one_line(saved, run, tmp_path, capsys):
    write_images(tmp_path / "images")
    cases = [(["--adapted", str(run)], "is a training run, not an adapted model: adapt it first"),
             (["--adapted", str(saved), "--images", str(tmp_path / "none")], "images folder"),
             (["--adapted", str(saved), "--threshold", "1.5"], "threshold must lie strictly between 0 and 1")]
    for extra, message in cases:
        args = ["predict", "--images", str(tmp_path / "images"), "--output", str(tmp_path / "o"), "--no-progress"]
        assert main(args + extra) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    big = tmp_path / "big"
    big.mkdir()
    Image.new("RGB", (300, 200)).save(big / "huge.png")
    os.environ["FEWSEG_MAX_PIXELS"] = "1000"
    try:
        assert main(["predict", "--adapted", str(saved), "--images", str(big), "--output", str(tmp_path / "o"),
                     "--no-progress"]) == 2
    finally:
        del os.environ["FEWSEG_MAX_PIXELS"]
    err = capsys.readouterr().err
    assert "huge.png" in err and "downscale it first" in err and err.count("\n") == 1


def test_ctrl_c_during_predict_exits_130(saved, tmp_path):
    write_images(tmp_path / "images", sizes=[(600, 800)] * 20)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "fewseg", "predict", "--adapted", str(saved), "--images",
                             str(tmp_path / "images"), "--output", str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "out" / "masks").glob("*.png")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=60)
    assert rc == 130, proc.stderr.read()
    assert "interrupted" in proc.stderr.read()
