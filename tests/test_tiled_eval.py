"""Tiled evaluation (issue 29): ``eval.tile`` / ``fewseg evaluate --tile PX --overlap F`` adapts on support patches at
the images' own resolution and predicts queries window by window, scored at the label maps' size."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from userpath import labelled, tiny_run

from fewseg.cli import main
from fewseg.config import Config, config_from_dict
from fewseg.data.sampler import EpisodeSampler
from fewseg.data.sources.folder import FolderDataset
from fewseg.engine.eval_settings import eval_settings
from fewseg.engine.evaluator import MetaLearner, evaluate
from fewseg.engine.session import evaluate_checkpoint
from fewseg.engine.tiled_eval import TiledEvaluation
from fewseg.errors import ConfigError
from fewseg.loading import load_algorithm
from fewseg.tiling import Tiling

SIZES = ((40, 56), (44, 50), (36, 60))  # label maps larger than the run's 24 px network and than a 16 px tile


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The tiny U-Net run of tests/userpath.py (24 px), without choosing test-time plans (a second, not five)."""
    return tiny_run(tmp_path_factory.mktemp("run"), "eval.tune=false")


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory):
    """Two class folders (FSS-1000 layout: <n>.jpg + mask <n>.png) of 3 photos each, a bright square on noise."""
    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    for name in ("pond", "roof"):
        (root / name).mkdir()
        for i, (h, w) in enumerate(SIZES):
            img, mask = labelled(rng, h, w, shift=i)
            Image.fromarray(img).save(root / name / f"{i}.jpg", quality=95)
            Image.fromarray(mask).save(root / name / f"{i}.png")
    return root


def _evaluate(run, root, tmp_path, name, **kw):
    return evaluate_checkpoint(run, shots=[1], episodes=2, queries=2, dataset="folder", data_root=str(root),
                               output=tmp_path / f"{name}.json", log=lambda *a, **k: None, **kw)


def test_a_tile_covering_every_image_scores_as_without_tiling(run, folder_root, tmp_path):
    base = _evaluate(run, folder_root, tmp_path, "base", baselines=["zero-shot", "random-init-long"])
    tiled = _evaluate(run, folder_root, tmp_path, "tiled", baselines=["zero-shot", "random-init-long"], tile=64)
    for method in ("maml", "zero-shot", "random-init-long"):
        assert tiled["results"]["1"][method]["miou"] == base["results"]["1"][method]["miou"]
        assert tiled["results"]["1"][method]["fb_iou"] == base["results"]["1"][method]["fb_iou"]
    assert "tiling" not in base and tiled["tiling"]["tile"] == 64
    assert base["scored_at"] == "original label resolution" and "tiles of 64 px" in tiled["scored_at"]


def test_a_small_tile_adapts_on_patches_of_as_many_images_and_scores_at_label_size(run, folder_root, monkeypatch):
    _, algo, _ = load_algorithm(run)
    ds = FolderDataset(folder_root, split="all", image_size=24)
    episodes = EpisodeSampler(ds, shots=2, queries=1, seed=0).fixed_episodes(2)
    tiled = TiledEvaluation.for_dataset(ds, Tiling(16, 0.25))
    asked = []
    plan_for = algo.plan_for
    monkeypatch.setattr(algo, "plan_for", lambda shots: asked.append(shots) or plan_for(shots))
    ep = episodes[0]
    stats = tiled.episode_stats(MetaLearner(algo), ep, 0.5, ds.full_resolution)
    assert asked == [2]  # the plan for 2 support *images*, not for their patches
    h, w = np.asarray(Image.open(folder_root / ep.keys[-1].replace(".jpg", ".png"))).shape
    # every pixel of the query's label map counted once: |P u T| + |not P n not T| = H * W
    assert (stats.fg_union + stats.bg_inter).tolist() == [h * w]
    summary = evaluate(MetaLearner(algo), episodes, tiled=tiled)
    assert summary["n_episodes"] == 2 and 0 <= summary["miou"] <= 1


def test_patch_episodes_are_read_whole_at_their_own_size(run, folder_root):
    _, algo, _ = load_algorithm(run)
    ds = FolderDataset(folder_root, split="all", image_size=24, patch=20, separate_sources=False)
    episodes = EpisodeSampler(ds, shots=1, queries=1, seed=0).fixed_episodes(1)
    for tile in (16, 64):  # windows and patches; one window per image
        stats = TiledEvaluation.for_dataset(ds, Tiling(tile)).episode_stats(MetaLearner(algo), episodes[0])
        h, w = np.asarray(Image.open(folder_root / episodes[0].keys[-1].replace(".jpg", ".png"))).shape
        assert (stats.fg_union + stats.bg_inter).tolist() == [h * w]


def test_evaluate_cli_with_a_tile(run, folder_root, tmp_path, capsys):
    out = tmp_path / "tiled.json"
    assert main(["evaluate", "--checkpoint", str(run), "--dataset", "folder", "--data-root", str(folder_root),
                 "--shots", "1", "--episodes", "1", "--queries", "1", "--tile", "16", "--overlap", "4",
                 "--baselines", "zero-shot", "random-init-long", "prototype", "--output", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["tiling"] == {"tile": 16, "overlap": 4, "overlap_pixels": 4}
    assert set(record["results"]["1"]) == {"maml", "zero-shot", "random-init-long", "prototype"}
    assert "tiles of 16 px (overlap 4 px)" in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["--tile", "-3"], "argument --tile: must be >= 0"),
    (["--tile", "big"], "argument --tile: expected an integer"),
    (["--tile", "16", "--overlap", "1.5"], "argument --overlap"),
    (["--tile", "16", "--overlap", "16"], "overlap of 16 px must be smaller than the tile"),
    (["--tile", "16"], "synthetic dataset has none"),
])
def test_evaluate_cli_with_a_bad_tile_exits_2_with_one_line(run, capsys, args, words):
    try:
        status = main(["evaluate", "--checkpoint", str(run), "--episodes", "1", *args])
    except SystemExit as exc:  # argparse
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


def test_eval_tile_and_overlap_config_keys():
    assert eval_settings(Config()).tiling is None
    cfg = config_from_dict({"eval": {"tile": 256, "overlap": 64}})
    assert eval_settings(cfg).tiling == Tiling(256, 64)
    assert eval_settings(cfg, tile=0).tiling is None and eval_settings(cfg, overlap=0.5).tiling == Tiling(256, 0.5)
    for bad in ({"tile": -1}, {"overlap": 1.5}, {"tile": 32, "overlap": 32}, {"overlap": -0.1}):
        with pytest.raises(ConfigError, match=f"eval.{next(iter(bad))}"):
            config_from_dict({"eval": bad})


def test_per_shot_learners_pick_by_images_not_patches():
    from fewseg.baselines.finetune import PerShotLearner

    class Plain:  # a baseline without adapt_patches (fine-tuning, prototype): its plain adapt on the patches
        def __init__(self, name):
            self.name = name

        def adapt(self, x, y, support_ignore=None):
            return (self.name, "adapt", x.shape[0])

    class Planned(Plain):
        def adapt_patches(self, x, y, ignore, images):
            return (self.name, "patches", x.shape[0], images)

    x, y, ignore = torch.rand(12, 3, 8, 8), torch.zeros(12, 1, 8, 8), torch.zeros(12, 1, 8, 8, dtype=torch.bool)
    learner = PerShotLearner({1: Plain("one"), 5: Planned("five")})
    assert learner.adapt_patches(x, y, ignore, 5) == ("five", "patches", 12, 5)
    assert learner.adapt_patches(x, y, ignore, 1) == ("one", "adapt", 12)
    assert learner.adapt(x, y, ignore)[0] == "five"  # by the support set's size: 12 -> the nearest, 5
