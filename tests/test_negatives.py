"""Negative support images (an empty mask: "this image shows none of the class") in the API, the CLI, test-time
plans, tiling, losses, baselines and training episodes; and Prediction.overlay / _repr_png_ for notebooks."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image
from userpath import labelled, write_images, write_support

import fewseg
from fewseg.algorithms.test_time import (
    AdaptationPlan,
    adapt_with_plan,
    augment_views,
    held_out,
    leave_one_out_scores,
)
from fewseg.baselines.prototype import PrototypeLearner
from fewseg.cli import main
from fewseg.config import config_from_dict
from fewseg.data.base import Sample, SegmentationDataset
from fewseg.data.sampler import EpisodeSampler, holds_class
from fewseg.engine.folders import overlay as folder_overlay
from fewseg.errors import ConfigError, DataError
from fewseg.losses import LOSSES
from fewseg.tiling import select_patches


def negative_photo(rng, h: int = 24, w: int = 24) -> np.ndarray:
    """A photo without the bright square of :func:`userpath.labelled` (a bluish blob instead)."""
    img = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
    img[h // 3:h // 3 + 6, w // 3:w // 3 + 6] = (40, 60, 200)
    return img


# --- the API ---------------------------------------------------------------------------------------------------
def test_adapt_with_one_positive_and_one_negative_uses_the_negative_pixels(seg, monkeypatch):
    rng = np.random.default_rng(0)
    img, mask = labelled(rng, 24, 24)
    neg = negative_photo(rng)
    targets = []
    loss_fn = seg.algorithm.loss_fn

    def spy(logits, target, ignore):
        targets.append((target.detach().clone(), None if ignore is None else ignore.detach().clone()))
        return loss_fn(logits, target, ignore)

    monkeypatch.setattr(seg.algorithm, "loss_fn", spy)
    adapted = seg.adapt([img, neg], [mask, np.zeros((24, 24), np.uint8)], steps=2)
    assert adapted.info["shots"] == 2 and adapted.info["negatives"] == 1 and adapted.info["steps"] == 2
    target, ignore = targets[0]
    assert target.shape[0] == 2 and target[0].any() and not target[1].any()     # the negative is in the loss ...
    assert ignore is None or not ignore[1].all()                                # ... with its pixels counted
    monkeypatch.setattr(seg.algorithm, "loss_fn", loss_fn)
    alone = seg.adapt([img], [mask], steps=2)
    assert alone.info["negatives"] == 0
    photo = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
    assert not np.allclose(adapted.predict(photo).probabilities, alone.predict(photo).probabilities)


def test_a_negative_in_the_middle_and_in_any_mask_encoding(seg, tmp_path):
    rng = np.random.default_rng(1)
    (a, ma), (b, mb) = labelled(rng, 20, 20), labelled(rng, 20, 26)
    Image.fromarray(np.zeros((20, 30), np.uint8), "L").save(tmp_path / "empty.png")
    empties = [np.zeros((20, 30), bool), Image.new("P", (30, 20)), str(tmp_path / "empty.png"),
               torch.zeros(1, 20, 30)]
    for empty in empties:
        adapted = seg.adapt([a, negative_photo(rng, 20, 30), b], [ma, empty, mb], steps=1)
        assert adapted.info["negatives"] == 1 and adapted.info["shots"] == 3


def test_no_positive_is_a_one_line_error_naming_the_masks_before_any_adaptation(seg, tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    for i in range(2):
        Image.fromarray(negative_photo(rng)).save(tmp_path / f"n{i}.jpg")
        Image.fromarray(np.zeros((24, 24), np.uint8)).save(tmp_path / f"n{i}.png")
    monkeypatch.setattr(seg.algorithm, "adapt", lambda *a, **k: pytest.fail("adapted without a positive"))
    with pytest.raises(DataError, match=r"no support mask holds foreground \(.*n0\.png, .*n1\.png\)") as info:
        seg.adapt([tmp_path / "n0.jpg", tmp_path / "n1.jpg"], [tmp_path / "n0.png", tmp_path / "n1.png"])
    assert "\n" not in str(info.value) and "at least one image must show the class" in str(info.value)
    with pytest.raises(DataError, match=r"no support mask holds foreground \(support mask 0\)"):
        seg.adapt([negative_photo(rng)], [np.zeros((24, 24), np.uint8)], tile=8)       # the tiled path too


def test_saved_adapted_model_records_its_negatives(seg, tmp_path):
    rng = np.random.default_rng(3)
    img, mask = labelled(rng, 24, 24)
    adapted = seg.adapt([img, negative_photo(rng)], [mask, np.zeros((24, 24), np.uint8)], steps=1)
    again = fewseg.load_adapted(adapted.save(tmp_path / "cls"))
    assert again.info["negatives"] == 1


def test_tiled_adaptation_takes_background_patches_of_a_negative(seg):
    rng = np.random.default_rng(4)
    img, mask = labelled(rng, 48, 48)
    adapted = seg.adapt([img, negative_photo(rng, 48, 48)], [mask, np.zeros((48, 48), np.uint8)], tile=12, steps=1)
    alone = seg.adapt([img], [mask], tile=12, steps=1)
    assert adapted.info["negatives"] == 1
    # image 0: 4 foreground patches + 4 background ones; the negative: as many as a positive's foreground (4)
    assert alone.info["support_patches"] == 8 and adapted.info["support_patches"] == 12
    assert select_patches([[True, False, True, False], [False] * 4], seed=0) == \
        [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 3)]
    assert select_patches([[True, False]], seed=0) == [(0, 0), (0, 1)]                  # no negative: as before


# --- the CLI ---------------------------------------------------------------------------------------------------
def test_cli_adapt_with_a_negative_in_the_support_folder(run, tmp_path, capsys):
    support = write_support(tmp_path / "support", n=2)
    rng = np.random.default_rng(5)
    Image.fromarray(negative_photo(rng, 30, 40)).save(support / "zz_none.jpg")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(support / "zz_none.png")
    write_images(tmp_path / "photos")
    assert main(["adapt", "--checkpoint", str(run), "--support", str(support), "--images", str(tmp_path / "photos"),
                 "--output", str(tmp_path / "out"), "--save-adapted", str(tmp_path / "cls"), "--steps", "1"]) == 0
    info = json.loads((tmp_path / "cls" / "meta.json").read_text())["adaptation"]
    assert info["shots"] == 3 and info["negatives"] == 1 and "zz_none.jpg" in info["support"]
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["q0.png", "q1.png"]
    capsys.readouterr()
    for p in support.glob("s*.png"):                                              # every mask empty: exit 2
        Image.fromarray(np.zeros((np.asarray(Image.open(p)).shape), np.uint8)).save(p)
    assert main(["adapt", "--checkpoint", str(run), "--support", str(support), "--save-adapted",
                 str(tmp_path / "cls2")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no support mask holds foreground" in err and "s0.png" in err and len(err.splitlines()) == 1


# --- test-time plans, losses, prototypes ------------------------------------------------------------------------
def _algo():
    torch.manual_seed(0)
    return fewseg.create_algorithm("maml", fewseg.create_model("seed-cnn", width=4), inner_steps=2, inner_lr=0.3)


def _support(positive: list[bool], size: int = 16):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(len(positive), 3, size, size, generator=g) * 0.5
    y = torch.zeros(len(positive), 1, size, size)
    for i, p in enumerate(positive):
        if p:
            y[i, :, 4:12, 3:10] = 1
    return torch.where(y.bool(), torch.full_like(x, 0.9), x), y


def _recording(monkeypatch, algo) -> list:
    seen, original = [], algo.adapt_run

    def adapt_run(x, y, ignore, *args, **kwargs):
        seen.append(y.clone())
        return original(x, y, ignore, *args, **kwargs)
    monkeypatch.setattr(algo, "adapt_run", adapt_run)
    return seen


def test_leave_one_out_never_holds_out_the_only_positive(monkeypatch):
    algo = _algo()
    assert held_out(_support([True, False, False])[1]) == [1, 2]
    assert held_out(_support([True, True, False])[1]) == [0, 1, 2]
    assert held_out(_support([False, False])[1]) == [0, 1]                 # no positive at all: as before
    for positive in ([True, False, False], [False, True, True, False], [False, False, True]):
        x, y = _support(positive)
        seen = _recording(monkeypatch, algo)
        leave_one_out_scores(algo, AdaptationPlan(2, leave_one_out=True), x, y, None)
        adapted = adapt_with_plan(algo, AdaptationPlan(2, leave_one_out=True), x, y, None)
        monkeypatch.undo()
        assert seen and all(bool(s.any()) for s in seen)                   # every support set kept a positive
        if sum(positive) < 2:                                               # one positive: the plan's steps
            assert adapted.info["steps"] == 2


def test_augmented_views_copy_the_positive_images_only():
    x, y = _support([False, True, False])
    xs, ys, _ = augment_views(x, y, None, views=2, seed=0)
    assert xs.shape[0] == 3 + 2 and all(bool(m.any()) for m in ys[3:])
    x, y = _support([True, True])
    xs, ys, _ = augment_views(x, y, None, views=2, seed=0)
    assert xs.shape[0] == 6                                                 # without negatives: as before


def test_one_shot_views_plan_with_a_negative_adapts_on_the_positive_views(monkeypatch):
    algo = _algo()
    x, y = _support([True, False])
    seen = _recording(monkeypatch, algo)
    adapted = adapt_with_plan(algo, AdaptationPlan(1, views=3), x, y, None)
    assert adapted.info["support_images"] == 2 + 3 and seen[-1].shape[0] == 5
    assert [bool(m.any()) for m in seen[-1]] == [True, False, True, True, True]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_are_finite_with_an_all_background_image_and_without_any_foreground(name):
    loss_fn = LOSSES[name]
    _, y = _support([True, False])
    for target, ignore in ((y, None), (y, torch.rand(y.shape) > 0.7), (torch.zeros_like(y), None),
                           (torch.zeros_like(y), torch.ones_like(y, dtype=torch.bool))):
        logits = torch.randn(y.shape, requires_grad=True)
        loss = loss_fn(logits, target, ignore)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    logits = torch.zeros(y.shape, requires_grad=True)                     # the negative's pixels have a gradient
    (grad,) = torch.autograd.grad(loss_fn(logits, y, None), logits)
    assert grad[1].abs().sum() > 0


def test_prototypes_pool_negatives_into_the_background_only():
    encoder = fewseg.create_model("seed-cnn", width=4).features
    x, y = _support([True, False])
    learner = PrototypeLearner(encoder)
    both, alone = learner.adapt(x, y), learner.adapt(x[:1], y[:1])
    assert torch.allclose(both.fg, alone.fg, atol=1e-6) and not torch.allclose(both.bg, alone.bg)
    none = learner.adapt(x, torch.zeros_like(y))
    assert torch.equal(none.fg, torch.zeros_like(none.fg)) and torch.isfinite(none.predict(x)).all()


# --- episodes with negatives ------------------------------------------------------------------------------------
class Coded(SegmentationDataset):
    """Class c has 6 images; image k of class c is filled with 100*c + k; image 0 of every class also shows
    class 0 (so it is never a negative of class 0)."""

    name = "coded"

    def __init__(self, classes: int = 4):
        self.class_names = {c: f"class{c}" for c in range(classes)}

    def items(self, class_id):
        return list(range(6))

    def load(self, key, class_id):
        mask = torch.zeros(1, 4, 4)
        mask[:, :2] = 1
        return Sample(torch.full((3, 4, 4), float(100 * class_id + key)), mask, torch.zeros(1, 4, 4, dtype=torch.bool))

    def holds_class(self, key, own_class, class_id):
        return class_id == own_class or (class_id == 0 and key == 0)


def test_sampler_negatives_are_other_classes_images_with_empty_masks():
    sampler = EpisodeSampler(Coded(), shots=3, queries=2, seed=0, negatives=2)
    for _ in range(30):
        ep = sampler.sample()
        values = [int(v) for v in ep.support_x[:, 0, 0, 0]]
        empty = [not m.any() for m in ep.support_y]
        assert sum(empty) == 2 and ep.support_x.shape[0] == 3
        for v, e in zip(values, empty):
            assert (v // 100 != ep.class_id) == e                          # negatives: other classes' images
            assert not (e and ep.class_id == 0 and v % 100 == 0)           # never an image showing the class
        assert len(set(values)) == 3 and all(int(v) // 100 == ep.class_id for v in ep.query_x[:, 0, 0, 0])
        assert len(ep.keys) == 5 and all(m.any() for m in ep.query_y)
    positions = {tuple(not m.any() for m in sampler.sample().support_y) for _ in range(30)}
    assert len(positions) > 1                                               # negatives take random places


def test_sampler_negatives_fraction_count_and_default_off():
    ds = Coded()
    plain = [EpisodeSampler(ds, 3, 2, seed=4).sample() for _ in range(3)]
    off = [EpisodeSampler(ds, 3, 2, seed=4, negatives=0).sample() for _ in range(3)]
    assert [e.keys for e in plain] == [e.keys for e in off]                 # 0: the episodes of before
    sampler = EpisodeSampler(ds, 5, 1, seed=0, negatives=0.5)
    counts = [sum(not m.any() for m in sampler.sample().support_y) for _ in range(40)]
    assert min(counts) >= 0 and max(counts) <= 4 and len(set(counts)) > 2  # a draw per episode, one positive kept
    assert all(sum(not m.any() for m in ep.support_y) == 0
               for ep in EpisodeSampler(ds, 1, 1, seed=0, negatives=3).fixed_episodes(4))   # 1 shot: no room
    assert all(sum(not m.any() for m in ep.support_y) == 1
               for ep in EpisodeSampler(ds, 2, 1, seed=0, negatives=3).fixed_episodes(4))   # at most shots - 1
    for bad in (-1, 1.0, 1.5, True, "2", float("nan")):
        with pytest.raises((TypeError, ValueError), match="negatives"):
            EpisodeSampler(ds, 3, 2, negatives=bad)
    with pytest.raises(DataError, match="other classes"):
        EpisodeSampler(Coded(classes=1), 3, 2, negatives=1)


def test_synthetic_negatives_never_show_the_class_as_a_distractor():
    ds = fewseg.create_dataset("synthetic", split="train", seed=0, image_size=16, n_distractors=[2, 3])
    sampler = EpisodeSampler(ds, shots=3, queries=1, seed=0, negatives=2)
    for _ in range(10):
        ep = sampler.sample()
        assert sum(not m.any() for m in ep.support_y) == 2
    c = ds.class_ids()[0]
    pairs = [(o, k) for o in ds.class_ids()[1:40] for k in range(5)]
    shows = [(o, k) for o, k in pairs if c in ds.render(o, k).distractor_classes]
    assert shows and all(holds_class(ds, k, o, c) for o, k in shows)
    assert not any(holds_class(ds, k, o, c) for o, k in pairs if (o, k) not in shows)


def test_labelmap_and_folder_negatives_follow_what_the_labels_say(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSEG_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "lm"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("0 background\n1 a\n2 b\n3 c\n")
    rng = np.random.default_rng(0)
    for i in range(9):                                     # image i shows class 1 + i % 3 and, when i < 3, class 1
        lab = np.zeros((16, 16), np.uint8)
        lab[2:8, 2:8] = 1 + i % 3
        if i < 3:
            lab[10:14, 10:14] = 1
        Image.fromarray(lab).save(root / "labels" / f"i{i}.png")
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "images" / f"i{i}.png")
    ds = fewseg.create_dataset("labelmap", root=str(root), split="all", fold="all", image_size=16,
                               min_foreground=0.0)
    shows_1 = {s for s in ds.items(1)}
    assert shows_1 == {"i0", "i1", "i2", "i3", "i6"}
    with pytest.warns(UserWarning, match="'b' \\(3 images\\), 'c' \\(3 images\\); skipping them"):
        sampler = EpisodeSampler(ds, shots=3, queries=1, seed=0, negatives=2)   # b, c: negatives only
    for _ in range(15):
        ep = sampler.sample(1)
        negatives = [k for k, m in zip(ep.keys, ep.support_y) if not m.any()]
        assert len(negatives) == 2 and not set(negatives) & shows_1
    folders = tmp_path / "fss"
    for name in ("cat", "dog"):
        (folders / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folders / name / f"{i}.jpg")
            Image.fromarray(np.pad(np.full((4, 4), 255, np.uint8), 4)).save(folders / name / f"{i}.png")
    fss = fewseg.create_dataset("folder", root=str(folders), split="all", image_size=16)
    ep = EpisodeSampler(fss, shots=3, queries=1, seed=0, negatives=1).sample(0)
    assert [k.split("/")[0] for k, m in zip(ep.keys, ep.support_y) if not m.any()] == ["dog"]


def test_meta_training_on_episodes_with_negatives_for_two_iterations():
    cfg = config_from_dict(tiny_config(0, train={"shots": 3}), ["data.negatives=1"])
    assert cfg.data.negatives == 1
    train_set = fewseg.create_dataset("synthetic", split="train", seed=0, image_size=16)
    sampler = EpisodeSampler(train_set, cfg.train.shots, cfg.train.queries, seed=0, negatives=cfg.data.negatives)
    algo = fewseg.create_algorithm("maml", fewseg.create_model("seed-cnn", width=4), inner_steps=1, inner_lr=0.1)
    optimizer = torch.optim.Adam(algo.parameters(), lr=1e-3)
    for i in range(2):
        batch = sampler.meta_batch(2)
        for t in range(batch.num_tasks):
            shown = [bool(m.any()) for m in batch.support_y[t]]
            assert shown.count(False) == 1 and shown.count(True) == 2      # a negative, positives kept
        optimizer.zero_grad()
        logs = algo.meta_backward(batch, iteration=i)
        optimizer.step()
        assert np.isfinite(logs["loss"])


def test_trainer_draws_its_episodes_with_the_configured_negatives(tmp_path):
    from fewseg.engine.trainer import Trainer
    cfg = config_from_dict(tiny_config(0, train={"shots": 3}), ["data.negatives=1", f"output={tmp_path / 'r'}"])
    trainer = Trainer(cfg, progress=False)
    assert trainer.sampler.negatives == 1
    ep = trainer.sampler.sample()
    assert [bool(m.any()) for m in ep.support_y].count(False) == 1


def test_config_checks_data_negatives():
    assert config_from_dict({}).data.negatives == 0
    assert config_from_dict({}, ["data.negatives=0.25"]).data.negatives == 0.25
    for bad in ("5", "1.0", "-1", "x", "true"):
        with pytest.raises(ConfigError, match="data.negatives"):
            config_from_dict({}, [f"data.negatives={bad}"])


# --- notebooks: Prediction.overlay and _repr_png_ --------------------------------------------------------------
def test_prediction_overlay_and_png_for_jupyter(seg, tmp_path):
    rng = np.random.default_rng(6)
    img, mask = labelled(rng, 24, 24)
    adapted = seg.adapt([img], [mask], steps=1)
    photo, _ = labelled(rng, 30, 45)
    Image.fromarray(photo).save(tmp_path / "p.png")
    for given in (photo, str(tmp_path / "p.png"), Image.fromarray(photo), torch.from_numpy(photo).permute(2, 0, 1)):
        pred = adapted.predict(given, threshold=0.3)
        shown = pred.overlay()
        assert shown.size == (45, 30) and shown.mode == "RGB"
        assert np.array_equal(np.asarray(shown), folder_overlay(photo, pred.mask))   # fewseg predict's overlays
        png = pred._repr_png_()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(io.BytesIO(png)).size == (45, 30)
    pred.mask[:] = False
    pred.mask[5:20, 5:30] = True
    blue = np.asarray(pred.overlay(alpha=1.0, color="blue"))
    assert tuple(blue[10, 10]) == (0, 0, 255) and tuple(blue[0, 0]) == tuple(photo[0, 0])
    clear = np.asarray(pred.overlay(alpha=0.0))                                  # alpha 0: the photo and the outline
    assert tuple(clear[10, 10]) == tuple(photo[10, 10]) and tuple(clear[5, 5]) == (0, 255, 0)
    bare = fewseg.Prediction(pred.probabilities, 0.5)
    assert bare._repr_png_()[:4] == b"\x89PNG"                                   # no photo: the probability map
    with pytest.raises(DataError, match="does not hold its photo"):
        bare.overlay()
    assert bare.overlay(image=photo).size == (45, 30)
    for bad in ({"alpha": 2}, {"color": "no-such-colour"}, {"color": (300, 0, 0)}):
        with pytest.raises(DataError, match="overlay"):
            pred.overlay(**bad)
    big = adapted.predict(np.zeros((1500, 2000, 3), np.uint8))
    assert Image.open(io.BytesIO(big._repr_png_())).size == (1024, 768)           # notebooks: at most 1024 a side
