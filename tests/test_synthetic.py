"""The embedded "synthetic" dataset: class space, splits, determinism, content, sampler integration."""

import numpy as np
import pytest
import torch

import fewseg
from fewseg.errors import ConfigError, DataError

# Look the class up through the registry: this works even where the module import is stubbed.
SyntheticDataset = fewseg.DATASETS.get("synthetic")


@pytest.fixture(scope="module")
def splits():
    return {s: SyntheticDataset(split=s, images_per_class=50) for s in ("train", "val", "test", "all")}


def test_registered_and_created_by_name():
    ds = fewseg.create_dataset("synthetic", split="val", seed=1)
    assert isinstance(ds, SyntheticDataset) and ds.name == "synthetic"
    assert "synthetic" in fewseg.list_datasets()


def test_class_space_and_names(splits):
    names = splits["all"].class_names
    assert len(names) >= 300
    assert sorted(names) == list(range(len(names)))
    assert len(set(names.values())) == len(names)  # names are unique
    for name in names.values():
        shape, texture, colours = name.split("/")
        assert shape and texture and colours
    assert "ring/stripes-h/teal-orange" in names.values()


def test_splits_disjoint_cover_all_and_fixed(splits):
    ids = {s: set(splits[s].class_ids()) for s in ("train", "val", "test")}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"])
    assert not (ids["val"] & ids["test"])
    assert ids["train"] | ids["val"] | ids["test"] == set(splits["all"].class_ids())
    n = len(splits["all"].class_ids())
    assert len(ids["train"]) == round(0.6 * n) and len(ids["val"]) == round(0.2 * n)
    # the split does not depend on the seed argument
    assert SyntheticDataset(split="test", seed=123).class_ids() == splits["test"].class_ids()
    # class_names holds this split's classes only
    assert set(splits["test"].class_names) == ids["test"]
    # test classes recombine shape / texture / colour scheme parts that all occur in training
    train_parts = [set(p) for p in zip(*(splits["all"].class_names[c].split("/") for c in ids["train"]))]
    for c in ids["test"]:
        shape, texture, colours = splits["all"].class_names[c].split("/")
        assert shape in train_parts[0] and texture in train_parts[1]
        assert colours in train_parts[2] or colours.split("-")[0] in {p.split("-")[0] for p in train_parts[2]}


def test_sample_shapes_dtypes_range(splits):
    ds = splits["train"]
    c = ds.class_ids()[0]
    assert list(ds.items(c)) == list(range(50))
    s = ds.load(7, c)
    assert s.image.shape == (3, 64, 64) and s.image.dtype == torch.float32
    assert s.mask.shape == (1, 64, 64) and s.mask.dtype == torch.float32
    assert s.ignore.shape == (1, 64, 64) and s.ignore.dtype == torch.bool and not s.ignore.any()
    assert s.image.min() >= 0 and s.image.max() <= 1
    assert set(torch.unique(s.mask).tolist()) <= {0.0, 1.0}
    s2 = SyntheticDataset(split="train", image_size=40).load(0, c)
    assert s2.image.shape == (3, 40, 40) and s2.mask.shape == (1, 40, 40)


def test_deterministic_by_seed_class_key(splits):
    ds = splits["train"]
    c0, c1 = ds.class_ids()[:2]
    a, b = ds.load(3, c0), SyntheticDataset(split="train", seed=0).load(3, c0)
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
    # the global RNGs play no part
    np.random.seed(99); torch.manual_seed(99)
    assert torch.equal(ds.load(3, c0).image, a.image)
    assert not torch.equal(SyntheticDataset(split="train", seed=1).load(3, c0).image, a.image)
    assert not torch.equal(ds.load(4, c0).image, a.image)
    assert not torch.equal(ds.load(3, c1).image, a.image)


def test_foreground_present_and_distractors_from_same_split(splits):
    for split in ("train", "test"):
        ds = splits[split]
        ids = set(ds.class_ids())
        fracs, n_with_distractor = [], 0
        for i, c in enumerate(ds.class_ids()[:40]):
            r = ds.render(c, i)
            assert r.mask.shape == (64, 64) and r.mask.dtype == bool
            assert not (r.mask & r.distractor_mask).any()
            assert 1 <= len(r.distractor_classes) <= 3
            assert c not in r.distractor_classes and set(r.distractor_classes) <= ids
            fracs.append(r.mask.mean())
            n_with_distractor += bool(r.distractor_mask.sum() >= 10)
            # distractors are coloured objects, not background: their pixels stand out from its colour
            background = ~(r.mask | r.distractor_mask)
            bg_colour = r.image[:, background].mean(1, keepdims=True)  # [3,1]
            far = np.abs(r.image[:, r.distractor_mask] - bg_colour).max(0) > 0.15
            assert far.mean() > 0.8
            assert torch.equal(ds.load(i, c).mask[0], torch.from_numpy(r.mask.astype(np.float32)))
        fracs = np.asarray(fracs)
        assert (fracs > 0.01).mean() >= 0.9 and fracs.min() > 0.003 and fracs.max() < 0.35
        assert n_with_distractor >= 36  # distractor objects are visible in (nearly) every image


def test_distractor_count_configurable():
    ds = SyntheticDataset(split="val", n_distractors=(0, 0))
    r = ds.render(ds.class_ids()[0], 0)
    assert r.distractor_classes == () and not r.distractor_mask.any()
    ds = SyntheticDataset(split="val", n_distractors=(3, 3))
    assert len(ds.render(ds.class_ids()[0], 0).distractor_classes) == 3


def _mean_fg_colour(ds, c, n=6):
    cols = [ds.load(k, c) for k in range(n)]
    return torch.stack([(s.image * s.mask).sum((1, 2)) / s.mask.sum() for s in cols]).mean(0)


def test_colour_schemes_give_different_foreground_colours(splits):
    ds = splits["all"]
    by_name = {v: k for k, v in ds.class_names.items()}
    red, blue = by_name["disc/solid/red"], by_name["disc/solid/blue"]
    m_red, m_blue = _mean_fg_colour(ds, red), _mean_fg_colour(ds, blue)
    assert m_red[0] > m_red[2] + 0.3 and m_blue[2] > m_blue[0] + 0.3
    assert (m_red - m_blue).abs().max() > 0.3
    # colour is jittered per image: not a perfect pixel classifier
    s0, s1 = ds.load(0, red), ds.load(1, red)
    c0 = (s0.image * s0.mask).sum((1, 2)) / s0.mask.sum()
    c1 = (s1.image * s1.mask).sum((1, 2)) / s1.mask.sum()
    assert 0 < (c0 - c1).abs().max() < 0.2


def _mean_abs_gradients(ds, c, n=4):
    """(vertical, horizontal) mean |intensity step| inside the target mask, averaged over n images."""
    out = []
    for k in range(n):
        r = ds.render(c, k)
        g, m = r.image.mean(0), r.mask  # [H,W]
        out.append((np.abs(np.diff(g, axis=0))[m[1:] & m[:-1]].mean(),
                    np.abs(np.diff(g, axis=1))[m[:, 1:] & m[:, :-1]].mean()))
    return np.asarray(out).mean(0)


def test_textures_differ(splits):
    ds = splits["all"]
    by_name = {v: k for k, v in ds.class_names.items()}
    gy_h, gx_h = _mean_abs_gradients(ds, by_name["square/stripes-h/red-yellow"])
    gy_v, gx_v = _mean_abs_gradients(ds, by_name["square/stripes-v/red-yellow"])
    gy_s, gx_s = _mean_abs_gradients(ds, by_name["square/solid/red"])
    assert gy_h > 3 * gx_h and gx_v > 3 * gy_v  # stripes stay image-aligned even on rotated objects
    assert max(gy_s, gx_s) < 0.5 * min(gy_h, gx_v)  # solid: only noise


def test_shapes_differ_in_mask(splits):
    ds = splits["all"]
    by_name = {v: k for k, v in ds.class_names.items()}
    # a ring has a hole: its mask is not filled at the object centre, a disc's is
    ring = ds.render(by_name["ring/solid/red"], 0).mask
    disc = ds.render(by_name["disc/solid/red"], 0).mask
    for m, filled in ((ring, False), (disc, True)):
        ys, xs = np.nonzero(m)
        cy, cx = round(ys.mean()), round(xs.mean())
        assert bool(m[cy, cx]) == filled


def test_num_classes_subset(splits):
    full = splits["train"]
    ds = SyntheticDataset(split="train", images_per_class=50, num_classes=12)
    ids = ds.class_ids()
    assert len(ids) == 12 and set(ids) < set(full.class_ids()) and set(ds.class_names) == set(ids)
    assert ids == SyntheticDataset(split="train", seed=5, num_classes=12).class_ids()  # fixed subset
    assert max(ids) - min(ids) > 50  # spread over the class space, not the first 12 ids
    # an image does not depend on num_classes (distractors come from the whole split)
    assert torch.equal(ds.load(2, ids[0]).image, full.load(2, ids[0]).image)
    assert ds.describe()["num_classes"] == 12 and len(ds.describe()["classes"]) == 12
    with pytest.raises(DataError):
        ds.load(0, next(c for c in full.class_ids() if c not in ids))


def test_validation_errors(splits):
    with pytest.raises(ConfigError, match="bogus"):
        SyntheticDataset(split="bogus")
    with pytest.raises(ConfigError, match="image_size"):
        SyntheticDataset(image_size=8)
    with pytest.raises(ConfigError, match="num_classes"):
        SyntheticDataset(split="val", num_classes=61)
    with pytest.raises(ConfigError, match="num_classes"):
        SyntheticDataset(split="val", num_classes=0)
    for bad in ((3, 1), (-1, 2), (1, 2, 3), "x"):
        with pytest.raises(ConfigError, match="n_distractors"):
            SyntheticDataset(n_distractors=bad)
    assert SyntheticDataset(n_distractors=2).n_distractors == (2, 2)
    assert SyntheticDataset(n_distractors=[0, 1]).n_distractors == (0, 1)  # YAML gives lists
    ds = splits["train"]
    other = splits["val"].class_ids()[0]
    with pytest.raises(DataError, match=str(other)):
        ds.load(0, other)
    with pytest.raises(DataError, match=str(other)):
        ds.items(other)
    with pytest.raises(DataError, match="50"):
        ds.load(50, ds.class_ids()[0])
    with pytest.raises(DataError, match="-1"):
        ds.load(-1, ds.class_ids()[0])


def test_through_episode_sampler():
    ds = fewseg.create_dataset("synthetic", split="train", seed=0)
    batch = fewseg.EpisodeSampler(ds, shots=5, queries=5, seed=0).meta_batch(2)
    assert batch.support_x.shape == batch.query_x.shape == (2, 5, 3, 64, 64)
    assert batch.support_y.shape == batch.query_y.shape == (2, 5, 1, 64, 64)
    assert batch.support_x.dtype == torch.float32
    assert 0 <= batch.support_x.min() and batch.support_x.max() <= 1
    assert (batch.support_y.sum((2, 3, 4)) > 0).all() and (batch.query_y.sum((2, 3, 4)) > 0).all()
    assert len(batch.class_ids) == 2 and set(batch.class_ids) <= set(ds.class_ids())
