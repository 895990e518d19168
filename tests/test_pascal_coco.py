"""PASCAL-5i and COCO-20i (HSNet's conventions) on miniature copies of the VOC 2012 and COCO 2014 layouts.

Every file is generated here into tmp_path: tiny JPEGs, index/palette PNG masks with 255 boundaries, a small
instances JSON (polygons, uncompressed and compressed RLE, a crowd region, two instances of one class).
The reference fold lists are written out by hand from HSNet's data/pascal.py and data/coco.py.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fewseg
from fewseg.data.sources import coco20i
from fewseg.data.sources.coco20i import Coco20iDataset, rle_mask, rle_string_counts, segmentation_mask
from fewseg.data.sources.pascal5i import Pascal5iDataset, hsnet_folds, pascal_fold_classes
from fewseg.errors import DataError


@pytest.fixture(autouse=True)
def _scan_cache(tmp_path, monkeypatch):
    """Mask scans go to a fresh cache folder, never to ~/.cache."""
    monkeypatch.setenv("FEWSEG_CACHE", str(tmp_path / "fewseg-cache"))


# --- reference folds (HSNet: PASCAL contiguous blocks of 5, COCO every 4th class) ---------------------------
PASCAL_FOLDS = [
    ["aeroplane", "bicycle", "bird", "boat", "bottle"],
    ["bus", "car", "cat", "chair", "cow"],
    ["diningtable", "dog", "horse", "motorbike", "person"],
    ["pottedplant", "sheep", "sofa", "train", "tvmonitor"],
]
COCO_FOLD0 = [1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 41, 45, 49, 53, 57, 61, 65, 69, 73, 77]
COCO_FOLD3 = [4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 64, 68, 72, 76, 80]
# COCO's 80 category ids (1..90 with gaps): position k (1-based, sorted by id) is class k of COCO-20i
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def test_fold_class_lists_are_hsnets():
    for f, names in enumerate(PASCAL_FOLDS):
        assert list(pascal_fold_classes(f).values()) == names
        assert list(pascal_fold_classes(f)) == [5 * f + 1 + i for i in range(5)]
    coco = hsnet_folds(80, interleaved=True)
    assert coco[0] == COCO_FOLD0 and coco[3] == COCO_FOLD3
    assert sorted(c for fold in coco for c in fold) == list(range(1, 81))   # a partition of the 80 classes


# --- a miniature VOC2012 -------------------------------------------------------------------------------------
H, W = 10, 20   # column j of every mask is class j+1 in rows 2..7; row 8 is boundary (255); rows 0,1,9 background
N_IMAGES, VAL_IMAGES = 8, (5, 6, 7)


def voc_labels(k: int) -> np.ndarray:
    lab = np.zeros((H, W), np.uint8)
    lab[2:8] = np.arange(1, 21, dtype=np.uint8)
    lab[2:8, k] = 0                 # image k holds no pixel of class k+1
    lab[8] = 255
    return lab


def make_voc(root: Path, lists: bool = False) -> Path:
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"2007_{k:06d}" for k in range(N_IMAGES)]
    for k, name in enumerate(names):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        im = Image.fromarray(voc_labels(k), "P" if k % 2 else "L")  # every other mask a palette PNG, as VOC's
        if k % 2:
            im.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 3 % 256, i)])
        im.save(root / "SegmentationClassAug" / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(names[k] + "\n" for k in VAL_IMAGES))
    if lists:  # HSNet's lists: <name>__<class>; fold f lists only its own classes; image 0 left out of trn
        for split, ks in (("trn", range(1, 5)), ("val", VAL_IMAGES)):
            (root / "splits" / split).mkdir(parents=True)
            for f in range(4):
                lines = [f"{names[k]}__{c}" for c in range(5 * f + 1, 5 * f + 6) for k in ks if k != c - 1]
                (root / "splits" / split / f"fold{f}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_pascal_folds_splits_and_masks(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    test = fewseg.create_dataset("pascal5i", split="test", root=str(root), image_size=20, fold=1, seed=0)
    assert isinstance(test, Pascal5iDataset)
    assert list(test.class_names.values()) == PASCAL_FOLDS[1]
    assert test.describe()["lists"] == "scanned masks" and test.describe()["image_set"] == "val"
    # scanned lists: the VOC val images holding a pixel of the class (image 5 has no class 6 = bus)
    assert test.items(6) == ["2007_000006", "2007_000007"]
    assert test.items(9) == ["2007_000005", "2007_000006", "2007_000007"]
    train = fewseg.create_dataset("pascal5i", split="train", root=str(root), image_size=20, fold=1, seed=0)
    val = fewseg.create_dataset("pascal5i", split="val", root=str(root), image_size=20, fold=1, seed=0)
    assert val.class_ids() == [1, 11, 16]       # the first class of each other fold (aeroplane, diningtable, ...)
    assert train.class_ids() == [c for c in range(1, 21) if c not in (1, 11, 16, 6, 7, 8, 9, 10)]
    assert train.items(2) == ["2007_000000", "2007_000002", "2007_000003", "2007_000004"]  # training images only
    hsnet_train = Pascal5iDataset(root, split="train", fold=1, val_classes="images")
    hsnet_val = Pascal5iDataset(root, split="val", fold=1, val_classes="images")
    assert hsnet_train.class_ids() == hsnet_val.class_ids() == [c for c in range(1, 21) if not 6 <= c <= 10]
    assert hsnet_val.items(2) == ["2007_000005", "2007_000006", "2007_000007"]
    assert Pascal5iDataset(root, split="val", fold=1, val_classes=["dog", 20]).class_ids() == [12, 20]
    with pytest.raises(ValueError, match="not a training class"):
        Pascal5iDataset(root, split="val", fold=1, val_classes=["cat"])
    assert len(Pascal5iDataset(root, split="all").class_ids()) == 20

    # masks: pad keeps the 10x20 photo at rows 5..14 of the 20x20 input; boundary 255 and padding are ignore
    s = test.load("2007_000006", 9)
    mask, ignore = np.zeros((20, 20), np.float32), np.zeros((20, 20), bool)
    mask[5 + 2:5 + 8, 8] = 1                 # class 9 (chair) is column 8
    ignore[:5], ignore[15:], ignore[5 + 8] = True, True, True
    assert torch.equal(s.mask[0], torch.from_numpy(mask)) and torch.equal(s.ignore[0], torch.from_numpy(ignore))
    assert Image.open(root / "SegmentationClassAug" / "2007_000007.png").mode == "P"
    full_mask, full_ignore, box = test.full_resolution("2007_000007", 9)  # a palette PNG, at its own 10x20
    assert box == (5, 0, 10, 20) and full_mask.shape == (1, 1, H, W)
    assert torch.equal(full_mask[0, 0], torch.from_numpy(voc_labels(7) == 9).float())
    assert torch.equal(full_ignore[0, 0], torch.from_numpy(voc_labels(7) == 255))

    # episodes of the sampler: only the fold's classes, each mask the class's own column
    for ds, allowed in ((test, set(range(6, 11))), (train, set(train.class_ids()) - set(range(6, 11)))):
        sampler = fewseg.EpisodeSampler(ds, shots=1, queries=1, seed=0)
        for _ in range(12):
            ep = sampler.sample()
            assert ep.class_id in allowed
            cols = torch.cat([ep.support_y, ep.query_y]).amax(dim=(0, 1, 2)).nonzero().flatten().tolist()
            assert cols == [ep.class_id - 1]


def test_pascal_reads_hsnet_lists(tmp_path):
    root = make_voc(tmp_path / "Datasets_HSN" / "VOC2012", lists=True)
    # root may be HSNet's dataset folder holding VOC2012/
    train = Pascal5iDataset(tmp_path / "Datasets_HSN", split="train", fold=0, val_classes="images")
    assert train.describe()["lists"] == str(root / "splits")
    assert train.class_ids() == list(range(6, 21))
    assert train.items(6) == ["2007_000001", "2007_000002", "2007_000003", "2007_000004"]  # image 0: not listed
    test = Pascal5iDataset(root, split="test", fold=0)
    assert test.class_ids() == [1, 2, 3, 4, 5] and test.items(1) == ["2007_000005", "2007_000006", "2007_000007"]
    # min_foreground filters the listed images further (class 1 = one column of 20: 6 of 200 pixels = 3%)
    assert Pascal5iDataset(root, split="test", fold=0, min_foreground=0.05).class_ids() == []


def _one_line(exc: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    for p in parts:
        assert p in msg, msg


def test_pascal_missing_files_are_one_line_errors(tmp_path):
    with pytest.raises(DataError) as e:
        Pascal5iDataset(tmp_path / "nowhere")
    _one_line(e, str(tmp_path / "nowhere"))
    root = make_voc(tmp_path / "VOC2012", lists=True)
    (root / "splits" / "val" / "fold2.txt").unlink()
    with pytest.raises(DataError) as e:
        Pascal5iDataset(root, split="test", fold=2)
    _one_line(e, str(root / "splits" / "val" / "fold2.txt"))
    (root / "splits" / "val" / "fold3.txt").write_text("2007_000099__17\n")
    with pytest.raises(DataError) as e:
        Pascal5iDataset(root, split="test", fold=3)
    _one_line(e, str(root / "JPEGImages" / "2007_000099.jpg"))
    (root / "splits" / "val" / "fold3.txt").write_text("2007_000005_17\n")
    with pytest.raises(DataError) as e:
        Pascal5iDataset(root, split="test", fold=3)
    _one_line(e, "fold3.txt line 1")
    for sub in ("splits", "ImageSets"):
        _rmtree(root / sub)
    with pytest.raises(DataError) as e:
        Pascal5iDataset(root, split="test")
    _one_line(e, str(root / "ImageSets" / "Segmentation" / "val.txt"))
    _rmtree(root / "SegmentationClassAug")
    with pytest.raises(DataError) as e:
        Pascal5iDataset(root, split="test")
    _one_line(e, str(root / "SegmentationClassAug"))
    with pytest.raises(ValueError, match="fold"):
        Pascal5iDataset(root, fold=4)


def _rmtree(path: Path) -> None:
    for p in sorted(path.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    path.rmdir()


# --- a miniature COCO 2014 ---------------------------------------------------------------------------------
CH, CW = 8, 10
SQUARE_A = [1.0, 1.0, 4.0, 1.0, 4.0, 4.0, 1.0, 4.0]       # pixels x 1..3, y 1..3
SQUARE_B = [6.0, 4.0, 9.0, 4.0, 9.0, 7.0, 6.0, 7.0]       # pixels x 6..8, y 4..6
RLE_COUNTS = [42, 4, 4, 4, 4, 4, 18]                        # column-major: rows 2..5 of columns 5..7
RLE_STRING = "a035000m0NWO"  # pycocotools' encoding of rows 1..3 of columns 2..4 plus pixel (row 6, column 8)


def rect(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((CH, CW), bool)
    m[y0:y1, x0:x1] = True
    return m


def make_coco(root: Path) -> Path:
    (root / "annotations").mkdir(parents=True)
    rng = np.random.default_rng(1)
    cats = [{"id": cid, "name": f"cat{cid}", "supercategory": "x"} for cid in COCO_IDS]
    for folder in ("train2014", "val2014"):
        (root / folder).mkdir()
        images = [{"id": i, "file_name": f"COCO_{folder}_{i:012d}.jpg", "height": CH, "width": CW}
                  for i in range(1, 6)]
        for im in images:
            Image.fromarray(rng.integers(0, 255, (CH, CW, 3), dtype=np.uint8)).save(root / folder / im["file_name"])
        # class 1 (category id 1), class 5 (id 5) are fold-0 test classes; class 2 (id 2), 3 (id 3) are not
        anns = [
            (1, 1, [SQUARE_A], 0), (1, 1, [SQUARE_B], 0),                      # two instances, one image
            (2, 1, {"counts": RLE_COUNTS, "size": [CH, CW]}, 1),               # a crowd region (RLE)
            (2, 5, {"counts": RLE_STRING, "size": [CH, CW]}, 0),               # compressed RLE
            (3, 1, [SQUARE_B], 0), (3, 5, [SQUARE_A, SQUARE_B], 0),           # two polygons, one instance
            (4, 2, [SQUARE_A], 0), (5, 2, [SQUARE_B], 0), (4, 3, [SQUARE_B], 0), (5, 3, [SQUARE_A], 0),
            (1, 2, [SQUARE_A], 0), (2, 3, [], 0),                              # an empty segmentation is skipped
        ]
        annotations = [{"id": n, "image_id": i, "category_id": c, "segmentation": seg, "iscrowd": crowd,
                        "area": 9.0, "bbox": [0, 0, 1, 1]} for n, (i, c, seg, crowd) in enumerate(anns, 1)]
        data = {"images": images, "annotations": annotations, "categories": cats}
        (root / "annotations" / f"instances_{folder}.json").write_text(json.dumps(data))
    return root


def test_coco_folds_items_and_merged_masks(tmp_path):
    root = make_coco(tmp_path / "coco")
    test = fewseg.create_dataset("coco20i", split="test", root=str(root), image_size=10, fold=0, seed=0,
                                 decoder="own", resize="stretch")
    assert isinstance(test, Coco20iDataset)
    d = test.describe()
    assert d["test_classes"] == [f"cat{COCO_IDS[c - 1]}" for c in COCO_FOLD0] and d["image_set"] == "val"
    assert test.class_ids() == [1, 5] and d["category_ids"] == {1: 1, 5: 5}
    assert test.items(1) == ["COCO_val2014_000000000001", "COCO_val2014_000000000002",
                             "COCO_val2014_000000000003"]
    # two instances of class 1 in image 1 merged into one mask; at 10x10 stretch rows are resized (nearest)
    full_mask, full_ignore, box = test.full_resolution("COCO_val2014_000000000001", 1)
    assert box == (0, 0, 10, 10) and not full_ignore.any()
    assert torch.equal(full_mask[0, 0].bool(), torch.from_numpy(rect(1, 4, 1, 4) | rect(4, 7, 6, 9)))
    s = test.load("COCO_val2014_000000000001", 1)
    assert s.mask.shape == (1, 10, 10) and s.mask.sum() > 0 and not s.ignore.any()
    # compressed RLE (pycocotools' string) and a crowd RLE
    m5 = test.labels("COCO_val2014_000000000002", 5)
    assert np.array_equal(m5 == 1, rect(1, 4, 2, 5) | rect(6, 7, 8, 9))
    assert np.array_equal(test.labels("COCO_val2014_000000000002", 1) == 1, rect(2, 6, 5, 8))
    # two polygons of one instance
    assert np.array_equal(test.labels("COCO_val2014_000000000003", 5) == 1, rect(1, 4, 1, 4) | rect(4, 7, 6, 9))
    # crowd="ignore": the crowd region is ignored, and image 2 is no longer an item of class 1
    ign = Coco20iDataset(root, split="test", fold=0, image_size=10, crowd="ignore", decoder="own")
    assert "COCO_val2014_000000000002" not in ign.items(1)
    lab = ign.labels("COCO_val2014_000000000001", 1)
    assert set(np.unique(lab).tolist()) == {0, 1}

    # episodes only of the fold's classes, masks those of their class
    sampler = fewseg.EpisodeSampler(test, shots=1, queries=1, seed=0)
    for _ in range(8):
        ep = sampler.sample()
        assert ep.class_id in COCO_FOLD0
    train = Coco20iDataset(root, split="train", fold=0, image_size=10, decoder="own")
    val = Coco20iDataset(root, split="val", fold=0, image_size=10, decoder="own")
    assert train.describe()["image_set"] == "trn" and train.folder == root / "train2014"
    assert val.class_ids() == [2, 3]            # the first class of folds 1, 2 (3: 4 has no image here)
    assert train.class_ids() == []              # 2 and 3 are held out for val; 1 and 5 are test
    hsnet_train = Coco20iDataset(root, split="train", fold=0, val_classes="images", decoder="own")
    assert hsnet_train.class_ids() == [2, 3]
    assert all(c not in COCO_FOLD0 for c in hsnet_train.class_ids())
    assert set(Coco20iDataset(root, split="all", decoder="own").class_ids()) == {1, 2, 3, 5}


def test_rle_and_polygon_decoders():
    assert np.array_equal(rle_mask({"counts": RLE_COUNTS, "size": [CH, CW]}, CH, CW), rect(2, 6, 5, 8))
    assert np.array_equal(rle_mask({"counts": RLE_STRING, "size": [CH, CW]}, CH, CW),
                          rect(1, 4, 2, 5) | rect(6, 7, 8, 9))
    # the string holds the runs; from the third on, as differences to the run two before
    assert sum(rle_string_counts(RLE_STRING)) == CH * CW
    with pytest.raises(ValueError, match="sum"):
        rle_mask({"counts": [1, 2], "size": [CH, CW]}, CH, CW)
    tri = segmentation_mask([[0.0, 0.0, 10.0, 0.0, 0.0, 8.0]], CH, CW, "own")
    assert tri[0, 0] and not tri[7, 9] and tri.sum() in range(35, 46)   # half of the 80 pixels


@pytest.mark.skipif(coco20i._pycocotools() is None, reason="pycocotools is not installed: only the own decoder")
def test_own_decoder_agrees_with_pycocotools():
    rng = np.random.default_rng(0)
    for t in range(30):
        h, w = int(rng.integers(5, 60)), int(rng.integers(5, 60))
        m = rng.random((h, w)) < 0.3
        flat = m.T.ravel().astype(np.int8)                       # column-major, as COCO's runs
        counts = np.diff(np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]).tolist()
        counts = [0] + counts if flat[0] else counts
        rle = {"counts": counts, "size": [h, w]}
        assert np.array_equal(segmentation_mask(rle, h, w, "own"), segmentation_mask(rle, h, w, "pycocotools"))
        n = int(rng.integers(3, 10))
        ang, r = np.sort(rng.random(n) * 2 * np.pi), rng.random(n) * 20 + 4
        poly = np.stack([w / 2 + r * np.cos(ang), h / 2 + r * np.sin(ang)], 1).ravel().tolist()
        own, ref = segmentation_mask([poly], h, w, "own"), segmentation_mask([poly], h, w, "pycocotools")
        assert not ((own ^ ref) & ~_edge(ref)).any()        # they differ on edge pixels only


def _edge(m: np.ndarray) -> np.ndarray:
    """Pixels within one pixel (8-neighbourhood) of both a pixel in ``m`` and one outside it (or the border)."""
    p = np.pad(m, 1, constant_values=False)
    shifts = [p[1 + dy:p.shape[0] - 1 + dy, 1 + dx:p.shape[1] - 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    grown, shrunk = np.any(shifts, axis=0), np.all(shifts, axis=0)
    return grown & ~shrunk


def test_coco_missing_files_are_one_line_errors(tmp_path):
    root = make_coco(tmp_path / "coco")
    (root / "annotations" / "instances_val2014.json").unlink()
    with pytest.raises(DataError) as e:
        Coco20iDataset(root, split="test")
    _one_line(e, str(root / "annotations" / "instances_val2014.json"))
    (root / "annotations" / "instances_val2014.json").write_text("{not json")
    with pytest.raises(DataError) as e:
        Coco20iDataset(root, split="test")
    _one_line(e, "instances_val2014.json", "not valid JSON")
    data = json.loads((root / "annotations" / "instances_train2014.json").read_text())
    data["categories"] = data["categories"][:20]
    (root / "annotations" / "instances_train2014.json").write_text(json.dumps(data))
    with pytest.raises(DataError) as e:
        Coco20iDataset(root, split="train")
    _one_line(e, "instances_train2014.json", "20 categories")
    root2 = make_coco(tmp_path / "coco2")
    (root2 / "val2014" / "COCO_val2014_000000000003.jpg").unlink()
    ds = Coco20iDataset(root2, split="test", decoder="own")
    with pytest.raises(DataError) as e:
        ds.load("COCO_val2014_000000000003", 1)
    _one_line(e, str(root2 / "val2014" / "COCO_val2014_000000000003.jpg"))
    _rmtree(root2 / "val2014")
    with pytest.raises(DataError) as e:
        Coco20iDataset(root2, split="test")
    _one_line(e, str(root2 / "val2014"))
    with pytest.raises(DataError) as e:
        Coco20iDataset(tmp_path / "nowhere")
    _one_line(e, str(tmp_path / "nowhere"))


def test_configs_build_both_datasets(tmp_path):
    """The data section of a run config (what `fewseg train data.name=... data.options=...` builds)."""
    from fewseg.config import DataConfig
    from fewseg.engine.builders import build_dataset
    voc, coco = make_voc(tmp_path / "VOC2012"), make_coco(tmp_path / "coco")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = build_dataset(DataConfig(name="pascal5i", root=str(voc), image_size=16,
                                      options={"fold": 2, "n_folds": 4, "resize": "pad", "cache": True}), "test", 0)
        assert list(ds.class_names.values()) == PASCAL_FOLDS[2]
        ds = build_dataset(DataConfig(name="coco20i", root=str(coco), image_size=16, options={"fold": 0}), "test", 0)
        assert ds.class_ids() == [1, 5]
    with pytest.raises(fewseg.ConfigError, match="n_folds"):
        build_dataset(DataConfig(name="pascal5i", root=str(voc), options={"n_folds": 5}), "test", 0)
