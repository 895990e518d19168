"""Dataset mixture: domains side by side (prefixed classes, each domain's splits kept), episodes within one
domain, one-line option errors, and evaluation reported per domain."""
import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_config, tiny_eval
from PIL import Image

import fewseg
from fewseg.config import DataConfig, config_from_dict
from fewseg.data.sources.mixture import STRIDE, MixtureDataset
from fewseg.engine.builders import build_dataset
from fewseg.engine.session import evaluate_checkpoint
from fewseg.engine.trainer import Trainer
from fewseg.errors import ConfigError


@pytest.fixture(scope="module")
def labelmap_root(tmp_path_factory):
    """A label-map folder: 8 classes (+ background), 6 photos of 20x12 (another size than the network's)."""
    root = tmp_path_factory.mktemp("labelmap")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("0 background\n" + "".join(f"{i} thing{i}\n" for i in range(1, 9)))
    rng = np.random.default_rng(0)
    for n in range(6):
        labels = np.repeat(np.arange(9, dtype=np.uint8)[rng.permutation(9)], 3)[None, :20].repeat(12, 0)
        labels[:, 18:] = rng.integers(1, 9)
        Image.fromarray(labels).save(root / "labels" / f"{n}.png")
        Image.fromarray(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)).save(root / "images" / f"{n}.png")
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSEG_CACHE", str(tmp_path / "cache"))


def domains(root):
    return [{"name": "synthetic", "options": {"num_classes": 3}},
            {"name": "labelmap", "root": str(root), "prefix": "things", "options": {"fold": 0, "n_folds": 4}}]


def test_classes_are_prefixed_and_each_split_is_the_union_of_the_domains_splits(labelmap_root):
    parts = {}
    for split in ("train", "val", "test"):
        ds = fewseg.create_dataset("mixture", domains=domains(labelmap_root), split=split, image_size=16)
        synth = fewseg.create_dataset("synthetic", split=split, image_size=16, num_classes=3)
        things = fewseg.create_dataset("labelmap", root=labelmap_root, split=split, fold=0, n_folds=4, image_size=16)
        expected = ({f"synthetic/{n}" for n in synth.class_names.values()}
                    | {f"things/{n}" for n in things.class_names.values()})
        assert set(ds.class_names.values()) == expected
        assert {ds.domain_of(n) for n in ds.class_names.values()} == {"synthetic", "things"}
        parts[split] = set(ds.class_ids())
    assert not parts["train"] & parts["val"] and not parts["train"] & parts["test"] and not parts["val"] & parts["test"]


def test_episodes_come_from_one_domain_at_the_networks_size(labelmap_root):
    ds = fewseg.create_dataset("mixture", domains=domains(labelmap_root), split="train", image_size=16)
    sampler = fewseg.EpisodeSampler(ds, shots=2, queries=2, seed=0)
    seen = set()
    for _ in range(30):
        ep = sampler.sample()
        d = ep.class_id // STRIDE
        assert all(key[0] == d for key in ep.keys)  # support and query images of the class's own domain
        assert tuple(ep.support_x.shape) == (2, 3, 16, 16) and tuple(ep.query_y.shape) == (2, 1, 16, 16)
        seen.add(ds.prefixes[d])
    assert seen == {"synthetic", "things"}
    c = next(c for c in ds.class_ids() if c // STRIDE == 1)  # a label-map class keeps its full-resolution masks
    mask, _, _ = ds.full_resolution(ds.items(c)[0], c)
    assert tuple(mask.shape[-2:]) == (12, 20)
    s = next(c for c in ds.class_ids() if c // STRIDE == 0)
    assert ds.full_resolution(ds.items(s)[0], s) is None  # synthetic: scored at the network size


@pytest.mark.parametrize(("options", "message"), [
    ({"domains": [{"name": "synthetic", "opts": {}}]}, "data.options.domains[0]: unknown key 'opts'"),
    ({"domains": [{"name": "nope"}]}, "domains[0].name: 'nope'"),
    ({"domains": [{"name": "mixture"}]}, "domains[0].name: 'mixture'"),
    ({"domains": [{"name": "synthetic"}, {"name": "synthetic"}]}, "prefix 'synthetic' is used twice"),
    ({"domains": [{"name": "synthetic", "options": {"bogus": 1}}]}, "domains[0] (synthetic)"),
    ({"domains": []}, "non-empty list"),
    ({"domain": []}, "domain"),
])
def test_a_bad_option_is_one_line_naming_it(options, message):
    cfg = DataConfig(name="mixture", image_size=16, options=options)
    with pytest.raises(ConfigError) as err:
        build_dataset(cfg, "train", 0)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_data_root_is_refused():
    with pytest.raises(ConfigError, match="each domain its own root"):
        build_dataset(DataConfig(name="mixture", root="/x", options={"domains": [{"name": "synthetic"}]}), "train", 0)


def test_a_tiny_train_and_evaluate_report_every_domain(labelmap_root, tmp_path):
    cfg = tiny_config(0, eval=tiny_eval(8, queries=1))
    cfg["data"].update(name="mixture", options={"domains": domains(labelmap_root)})
    out = tmp_path / "run"
    Trainer(config_from_dict(cfg, [f"output={out}"]), progress=False).fit()
    lines = []
    record = evaluate_checkpoint(out, log=lines.append)
    summary = record["results"]["1"]["maml"]
    per = summary["per_domain"]
    assert set(per) == {"synthetic", "things"}
    test = MixtureDataset(domains(labelmap_root), split="test", image_size=16)
    for d, r in per.items():
        assert 0 <= r["miou"] <= 1 and math.isfinite(r["miou_ci95"]) and 0 <= r["fb_iou"] <= 1
        assert {test.class_names[int(c)].split("/")[0] for c in r["per_class"]} == {d}
    assert sum(r["n_episodes"] for r in per.values()) == summary["n_episodes"] == 8
    # the overall mIoU is the mean over every class, so the class-weighted mean of the domains' mIoUs
    weighted = sum(r["miou"] * r["n_classes"] for r in per.values()) / sum(r["n_classes"] for r in per.values())
    assert summary["miou"] == pytest.approx(weighted)
    stored = json.loads((out / "eval.json").read_text())
    assert "| things | maml |" in stored["domain_table"] and "| synthetic | maml |" in stored["domain_table"]
    assert any("per domain" in line and "| things | maml |" in line for line in lines)
    assert torch.isfinite(torch.tensor(stored["results"]["1"]["maml"]["per_domain"]["things"]["miou"]))
