"""The user's path: demo --quick, evaluate with baselines, adapt a folder."""
import json

import numpy as np
import pytest
from PIL import Image
from test_train import TINY

from fewseg.cli import main
from fewseg.config import config_from_dict
from fewseg.engine.trainer import Trainer


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    Trainer(config_from_dict(TINY, [f"output={out}"]), progress=False).fit()
    return out


def test_evaluate_prints_table_with_every_baseline_and_writes_json(trained_run, capsys):
    out_json = trained_run / "e.json"
    assert main(["evaluate", "--checkpoint", str(trained_run), "--shots", "1", "2", "--episodes", "4",
                 "--baselines", "--output", str(out_json)]) == 0
    printed = capsys.readouterr().out
    record = json.loads(out_json.read_text())
    for shots in ("1", "2"):
        methods = record["results"][shots]
        assert set(methods) == {"maml", "zero-shot", "random-init", "random-init-long", "transfer", "prototype",
                                "imagenet-prototype", "linear-probe"}
        for summary in methods.values():
            assert 0.0 <= summary["miou"] <= 1.0 and 0.0 <= summary["fb_iou"] <= 1.0
            assert summary["n_episodes"] == 4
    assert "| zero-shot |" in printed and "FB-IoU" in printed
    assert (trained_run / "checkpoints" / "transfer" / "weights.safetensors").exists()


def test_adapt_writes_masks_and_overlays_for_a_folder(trained_run, tmp_path, capsys):
    support, images = tmp_path / "support", tmp_path / "images"
    support.mkdir(), images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        img = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
        mask = np.zeros((40, 50), np.uint8)
        mask[10:30, 5 + i:25 + i] = 255
        Image.fromarray(img).save(support / f"s{i}.jpg")
        Image.fromarray(mask).save(support / f"s{i}.png")
        Image.fromarray(img).save(images / f"q{i}.jpg")
    assert main(["adapt", "--checkpoint", str(trained_run), "--support", str(support), "--images", str(images),
                 "--output", str(tmp_path / "out")]) == 0
    masks = sorted((tmp_path / "out" / "masks").glob("*.png"))
    assert len(masks) == 3 and Image.open(masks[0]).size == (50, 40)
    meta = json.loads((trained_run / "checkpoints" / "last" / "meta.json").read_text())
    assert meta["preprocessing"]["resize"] == "stretch" and meta["preprocessing"]["image_size"] > 0
    assert len(list((tmp_path / "out" / "overlays").glob("*.png"))) == 3
    Image.fromarray(np.zeros((40, 51), np.uint8)).save(support / "s0.png")  # wrong size
    assert main(["adapt", "--checkpoint", str(trained_run), "--support", str(support), "--images", str(images),
                 "--output", str(tmp_path / "out")]) == 2
    assert "s0.png" in capsys.readouterr().err


def test_demo_quick_writes_the_report(tmp_path, capsys):
    assert main(["demo", "--quick", "--seed", "2", "--output", str(tmp_path / "demo")]) == 0
    out = tmp_path / "demo"
    for name in ("report.md", "training.png", "miou_vs_steps.png", "miou_vs_shots.png", "overlays.png",
                 "eval.json", "log.jsonl"):
        assert (out / name).exists(), name
    record = json.loads((out / "eval.json").read_text())
    assert {"1", "5"} == set(record["results"])
    assert record["config"]["seed"] == 2 and record["config"]["name"] == "demo"
    printed = capsys.readouterr().out
    table_end = printed.index("| prototype |")
    assert table_end < printed.index("bit-identical only on the same machine, torch build and thread count")
    assert "docs/results.md" in printed


def test_evaluate_with_more_shots_than_images_fails_clearly(trained_run, capsys):
    assert main(["evaluate", "--checkpoint", str(trained_run), "--shots", "400", "--episodes", "2"]) == 2
    err = capsys.readouterr().err
    assert "fewer than shots+queries=405" in err and err.count("\n") == 1


def test_cross_dataset_evaluation_on_a_class_folder_root(trained_run, tmp_path, capsys):
    from test_sources import make_class
    root = tmp_path / "unseen"
    for name in ("kettle", "lamp"):
        make_class(root, name, n=7, size=(20, 28))
    out_json = tmp_path / "cross.json"
    assert main(["evaluate", "--checkpoint", str(trained_run), "--dataset", "folder", "--data-root", str(root),
                 "--shots", "1", "--episodes", "2", "--baselines", "zero-shot", "random-init",
                 "--output", str(out_json)]) == 0
    record = json.loads(out_json.read_text())
    assert set(record["dataset"]["classes"].values()) == {"kettle", "lamp"}
    assert record["scored_at"] == "original label resolution"
    assert set(record["results"]["1"]) == {"maml", "zero-shot", "random-init"}
    assert "test: folder 2 classes" in capsys.readouterr().out
