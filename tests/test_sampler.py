"""Episodes: seeded, disjoint support/query, class filtering, and the same loss for the same seed."""
import warnings

import pytest
import torch

import fewseg
from fewseg.data.base import Sample, SegmentationDataset
from fewseg.errors import DataError


class TinyDataset(SegmentationDataset):
    """Class c has counts[c] images; image k of class c is filled with the value 100*c + k."""

    name = "tiny"

    def __init__(self, counts):
        self.counts = counts
        self.class_names = {c: f"class{c}" for c in range(len(counts))}

    def items(self, class_id):
        return list(range(self.counts[class_id]))

    def load(self, key, class_id):
        img = torch.full((3, 4, 4), float(100 * class_id + key))
        mask = torch.zeros(1, 4, 4)
        mask[:, :2] = 1
        return Sample(img, mask, torch.zeros(1, 4, 4, dtype=torch.bool))


def test_episode_is_one_class_with_disjoint_support_and_query():
    sampler = fewseg.EpisodeSampler(TinyDataset([12, 12, 12]), shots=3, queries=4, seed=0)
    for _ in range(20):
        ep = sampler.sample()
        values = torch.cat([ep.support_x[:, 0, 0, 0], ep.query_x[:, 0, 0, 0]]).tolist()
        assert len(set(values)) == 7  # no image twice
        assert {int(v) // 100 for v in values} == {ep.class_id}
        assert ep.support_x.shape == (3, 3, 4, 4) and ep.query_y.shape == (4, 1, 4, 4)


def test_same_seed_same_episodes_other_seed_other_episodes():
    ds = TinyDataset([10] * 5)

    def draw(seed):
        sampler = fewseg.EpisodeSampler(ds, 2, 2, seed=seed)
        return [sampler.sample().keys for _ in range(5)]

    a, b, c = draw(7), draw(7), draw(8)
    assert a == b and a != c


def test_sampler_does_not_touch_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fewseg.EpisodeSampler(TinyDataset([10] * 3), 2, 2, seed=0).meta_batch(3)
    assert torch.equal(torch.rand(3), expected)


def test_classes_with_too_few_images_are_skipped_with_a_warning_naming_them():
    with pytest.warns(UserWarning, match="'class1' \\(3 images\\)"):
        sampler = fewseg.EpisodeSampler(TinyDataset([10, 3, 10]), shots=2, queries=2, seed=0)
    assert sampler.classes == [0, 2]
    with pytest.raises(DataError, match="'class1'"):
        fewseg.EpisodeSampler(TinyDataset([10, 3]), shots=2, queries=2, seed=0, strict=True)
    with pytest.raises(DataError, match="no class is left"):
        fewseg.EpisodeSampler(TinyDataset([3, 3]), shots=2, queries=2, seed=0)


def test_fixed_episodes_cycle_over_classes():
    sampler = fewseg.EpisodeSampler(TinyDataset([10] * 4), 1, 1, seed=0)
    assert [e.class_id for e in sampler.fixed_episodes(8)] == [0, 1, 2, 3, 0, 1, 2, 3]


def test_same_seed_gives_the_same_synthetic_meta_batch_and_loss():
    losses = []
    for _ in range(2):
        ds = fewseg.create_dataset("synthetic", split="train", seed=0, image_size=32)
        batch = fewseg.EpisodeSampler(ds, shots=2, queries=2, seed=5).meta_batch(2)
        torch.manual_seed(0)
        algo = fewseg.create_algorithm("maml", fewseg.create_model("seed-cnn", width=4), inner_steps=1)
        losses.append((batch, algo.outer_loss(batch, iteration=0).item()))
    (b1, l1), (b2, l2) = losses
    assert torch.equal(b1.support_x, b2.support_x) and torch.equal(b1.query_y, b2.query_y) and l1 == l2


def test_synthetic_splits_are_disjoint_and_episode_queries_hold_other_classes():
    splits = {s: set(fewseg.create_dataset("synthetic", split=s).class_ids()) for s in ("train", "val", "test")}
    assert not (splits["train"] & splits["val"]) and not (splits["train"] & splits["test"])
    assert not (splits["val"] & splits["test"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ep = fewseg.EpisodeSampler(fewseg.create_dataset("synthetic", split="test"), 1, 2, seed=0).sample()
    # foreground is a minority of the pixels that differ from the background: distractors are present
    assert 0 < float(ep.query_y.mean()) < 0.5
