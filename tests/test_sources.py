"""File-backed data: decoding (io), resizing and augmentation (transforms), class folders, label maps.

Every fixture is generated here with PIL into tmp_path; one test reads the real CCP set and skips without it.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fewseg
from fewseg.data import io
from fewseg.data.sources import folder as folder_mod
from fewseg.data.sources import labelmap as lm
from fewseg.data.sources import labelmap_scan
from fewseg.data.sources.folder import FolderDataset, FSS1000Dataset
from fewseg.data.sources.labelmap import LabelMapDataset, fold_blocks
from fewseg.data.transforms import JointAugment, resize_pair
from fewseg.errors import DataError

CCP = Path(__file__).resolve().parents[2] / "shared" / "data" / "ccp"


@pytest.fixture(autouse=True)
def _scan_cache(tmp_path, monkeypatch):
    """Label scans go to a fresh cache folder, never to ~/.cache."""
    monkeypatch.setenv("FEWSEG_CACHE", str(tmp_path / "fewseg-cache"))


def shape_mask(h=12, w=16) -> np.ndarray:
    """An asymmetric foreground: a block in the left half plus one pixel column at the right edge."""
    fg = np.zeros((h, w), dtype=bool)
    fg[2:9, 1:6] = True
    fg[:, w - 1] = True
    return fg


# --- io: masks ----------------------------------------------------------------------------------------
def _encodings(fg: np.ndarray) -> dict[str, tuple[Image.Image, np.ndarray]]:
    """name -> (PIL image, expected foreground)."""
    u8 = fg.astype(np.uint8)
    out = {
        "0/1": (Image.fromarray(u8, "L"), fg),
        "0/255": (Image.fromarray(u8 * 255, "L"), fg),
        "mode 1": (Image.fromarray(u8 * 255, "L").convert("1"), fg),
    }
    aa = np.where(fg, 200, 30).astype(np.uint8)
    aa[0, 0], aa[0, 1] = 128, 127  # soft edge values either side of the threshold
    exp = fg.copy()
    exp[0, 0], exp[0, 1] = True, False
    out["anti-aliased"] = (Image.fromarray(aa, "L"), exp)
    pal = Image.fromarray(u8 * 3, "P")
    pal.putpalette([0, 0, 0, 10, 10, 10, 20, 20, 20, 250, 0, 0] + [0] * (256 * 3 - 12))
    out["palette"] = (pal, fg)
    rgb = np.zeros(fg.shape + (3,), np.uint8)
    rgb[fg] = (0, 220, 0)  # a green mask: the max over channels finds it
    out["RGB"] = (Image.fromarray(rgb, "RGB"), fg)
    rgba = np.zeros(fg.shape + (4,), np.uint8)
    rgba[..., 3] = u8 * 255  # constant colour, shape in alpha
    out["RGBA alpha"] = (Image.fromarray(rgba, "RGBA"), fg)
    rgba2 = np.full(fg.shape + (4,), 255, np.uint8)
    rgba2[..., :3] = u8[..., None] * 255  # opaque, shape in colour
    out["RGBA opaque"] = (Image.fromarray(rgba2, "RGBA"), fg)
    la = np.stack([u8 * 255, np.full_like(u8, 255)], axis=-1)
    out["LA"] = (Image.fromarray(la, "LA"), fg)
    out["16-bit 0/65535"] = (Image.fromarray(u8.astype(np.uint16) * 65535), fg)
    aa16 = np.where(fg, 40000, 20000).astype(np.uint16)
    out["16-bit anti-aliased"] = (Image.fromarray(aa16), fg)
    return out


@pytest.mark.parametrize("encoding", list(_encodings(shape_mask())))
def test_mask_encodings_decode_to_the_foreground(tmp_path, encoding):
    fg = shape_mask()
    im, expected = _encodings(fg)[encoding]
    path = tmp_path / "m.png"
    im.save(path)
    got, ignore = io.read_binary_mask(path)
    assert got.dtype == bool and got.shape == fg.shape
    np.testing.assert_array_equal(got, expected)
    assert not ignore.any()


def test_mask_void_value_is_ignore(tmp_path):
    v = shape_mask().astype(np.uint8)
    v[0, :] = 255  # VOC style: 0 background, 1 object, 255 void
    Image.fromarray(v, "L").save(tmp_path / "m.png")
    fg, ignore = io.read_binary_mask(tmp_path / "m.png")
    np.testing.assert_array_equal(fg, v == 1)
    np.testing.assert_array_equal(ignore, v == 255)


# --- io: photos -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,ext", [("L", "png"), ("L", "jpg"), ("CMYK", "jpg"), ("RGBA", "png"),
                                      ("P", "png"), ("I;16", "png"), ("RGB", "bmp")])
def test_photos_of_any_mode_load_as_rgb(tmp_path, mode, ext):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65535, (10, 14)).astype(np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 255, (10, 14, 3)).astype(np.uint8), "RGB").convert(mode)
    path = tmp_path / f"x.{ext}"
    im.save(path)
    a = io.read_image(path)
    assert a.shape == (10, 14, 3) and a.dtype == np.uint8
    if mode in ("L", "I;16"):
        assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    if mode == "I;16":
        assert a.max() > 200  # scaled from 16 bits, not clipped to 255


def test_corrupt_truncated_and_missing_images_raise_dataerror_naming_the_file(tmp_path):
    (tmp_path / "garbage.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match="garbage.jpg"):
        io.read_image(tmp_path / "garbage.jpg")
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.png"):
        io.read_image(tmp_path / "cut.png")
    with pytest.raises(DataError, match="nowhere.png"):
        io.read_binary_mask(tmp_path / "nowhere.png")
    with pytest.raises(DataError) as exc:
        io.read_label_map(tmp_path / "garbage.jpg")
    assert "\n" not in str(exc.value)


def test_read_label_map_modes(tmp_path):
    ids = np.array([[0, 1, 2], [3, 255, 7]], np.uint8)
    Image.fromarray(ids, "L").save(tmp_path / "l.png")
    pal = Image.fromarray(ids, "P")
    pal.putpalette(list(np.random.default_rng(0).integers(0, 255, 768)))  # a colour palette: indices count
    pal.save(tmp_path / "p.png")
    Image.fromarray(np.repeat(ids[..., None], 3, 2), "RGB").save(tmp_path / "grey.png")
    for name in ("l.png", "p.png", "grey.png"):
        np.testing.assert_array_equal(io.read_label_map(tmp_path / name), ids)
    Image.fromarray(ids.astype(np.uint16) * 100).save(tmp_path / "wide.png")
    wide = io.read_label_map(tmp_path / "wide.png")
    assert wide.dtype == np.int64 and wide.max() == 25500
    colour = np.zeros((2, 3, 3), np.uint8)
    colour[0, 0] = (128, 0, 0)
    Image.fromarray(colour, "RGB").save(tmp_path / "voc_colours.png")
    with pytest.raises(DataError, match="voc_colours.png.*colour"):
        io.read_label_map(tmp_path / "voc_colours.png")


# --- transforms ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["stretch", "pad", "crop"])
def test_resize_modes_shape_and_pad_is_ignore(mode):
    image = np.full((20, 40, 3), 200, np.uint8)  # wide photo
    labels = np.ones((20, 40), np.uint8)
    x, lab = resize_pair(image, labels, 16, mode)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and lab.shape == (16, 16)
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    if mode == "pad":  # 20x40 -> 8x16 centred: 4 rows of padding above and below
        assert (lab[:4] == 255).all() and (lab[-4:] == 255).all() and (lab[4:12] == 1).all()
        assert float(x[:, :4].abs().max()) == 0.0
    else:
        assert (lab == 1).all()


def test_resize_is_nearest_for_labels():
    labels = np.random.default_rng(0).choice(np.array([0, 3, 9, 255]), size=(37, 53)).astype(np.int64)
    _, lab = resize_pair(np.zeros((37, 53, 3), np.uint8), labels, 16, "stretch")
    assert set(torch.unique(lab).tolist()) <= {0, 3, 9, 255}


def _asymmetric_sample(size=32):
    mask = torch.zeros(1, size, size)
    mask[:, 4:20, 2:12] = 1  # left-heavy object
    image = torch.zeros(3, size, size)
    image[0] = mask[0]  # red exactly where the mask is
    image[2] = 0.3
    return image, mask, torch.zeros(1, size, size, dtype=torch.bool)


def test_joint_augment_flips_image_and_mask_together():
    image, mask, ignore = _asymmetric_sample()
    aug = JointAugment(flip=True, scale=None, colour=0.0)
    flipped = 0
    for seed in range(12):
        im2, m2, _ = aug(image, mask, ignore, torch.Generator().manual_seed(seed))
        was_flipped = torch.equal(m2, mask.flip(-1))
        assert was_flipped or torch.equal(m2, mask)
        assert torch.equal(im2, image.flip(-1) if was_flipped else image)
        flipped += was_flipped
    assert 0 < flipped < 12  # both outcomes occur


def test_joint_augment_keeps_image_and_mask_aligned_and_is_deterministic():
    image, mask, ignore = _asymmetric_sample()
    aug = JointAugment(flip=True, scale=(0.7, 1.4), colour=0.0)
    for seed in range(8):
        im2, m2, i2 = aug(image, mask, ignore, torch.Generator().manual_seed(seed))
        assert im2.shape == image.shape and m2.shape == mask.shape and i2.shape == ignore.shape
        assert set(torch.unique(m2).tolist()) <= {0.0, 1.0} and i2.dtype == torch.bool
        agree = ((im2[0] > 0.5) == (m2[0] > 0.5)).float().mean()
        assert agree > 0.95  # only bilinear edge pixels may differ
        assert not (m2.bool() & i2).any()  # zoom-out padding is ignore and never foreground
    colour = JointAugment(colour=0.3)
    a = colour(image, mask, ignore, torch.Generator().manual_seed(5))
    b = colour(image, mask, ignore, torch.Generator().manual_seed(5))
    c = colour(image, mask, ignore, torch.Generator().manual_seed(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert float(a[0].min()) >= 0 and float(a[0].max()) <= 1


def test_joint_augment_crop_area_zooms_in_aligned_and_replays_from_the_generator():
    image, mask, ignore = _asymmetric_sample()
    aug = JointAugment(flip=False, scale=None, colour=0.0, crop_area=(0.5, 0.7), crop_aspect=(3 / 4, 4 / 3))
    changed = 0
    for seed in range(6):
        im2, m2, i2 = aug(image, mask, ignore, torch.Generator().manual_seed(seed))
        again = aug(image, mask, ignore, torch.Generator().manual_seed(seed))
        assert all(torch.equal(a, b) for a, b in zip((im2, m2, i2), again))
        assert im2.shape == image.shape and m2.shape == mask.shape and i2.dtype == torch.bool
        assert set(torch.unique(m2).tolist()) <= {0.0, 1.0} and not i2.any()  # a crop adds no ignore border
        assert ((im2[0] > 0.5) == (m2[0] > 0.5)).float().mean() > 0.9
        changed += not torch.equal(m2, mask)
    assert changed == 6  # 50-70% of the area, resized back: never the input itself
    for bad in ({"crop_area": (0.5, 1.5)}, {"crop_area": (0.0, 0.5)}, {"crop_aspect": (2.0, 1.0)}):
        with pytest.raises(ValueError):
            JointAugment(**bad)
    grey = JointAugment(colour=0.3, crop_area=(0.6, 1.0))(torch.rand(1, 32, 32), mask, ignore,
                                                         torch.Generator().manual_seed(0))
    assert grey[0].shape == (1, 32, 32) and 0 <= float(grey[0].min()) <= float(grey[0].max()) <= 1


# --- class folders ------------------------------------------------------------------------------------
def make_class(root: Path, name: str, n: int = 3, size=(12, 16), mask_fn=None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    rng = np.random.default_rng(len(name))
    for i in range(1, n + 1):
        Image.fromarray(rng.integers(0, 255, size + (3,)).astype(np.uint8), "RGB").save(d / f"{i}.jpg")
        fg = shape_mask(*size) if mask_fn is None else mask_fn(i)
        Image.fromarray(fg.astype(np.uint8) * 255, "L").save(d / f"{i}.png")
    return d


@pytest.fixture
def fss_root(tmp_path):
    root = tmp_path / "fss"
    for k in range(10):
        make_class(root, f"class{k:02d}", n=2)
    return root


def test_folder_dataset_loads_and_is_registered(fss_root):
    ds = fewseg.create_dataset("folder", root=str(fss_root), split="all", image_size=16)
    assert isinstance(ds, FolderDataset) and ds.class_ids() == list(range(10))
    assert ds.class_names[3] == "class03"
    items = ds.items(3)
    assert len(items) == 2
    s = ds.load(items[0], 3)
    assert s.image.shape == (3, 16, 16) and s.mask.shape == (1, 16, 16) and s.ignore.shape == (1, 16, 16)
    assert set(torch.unique(s.mask).tolist()) == {0.0, 1.0} and not s.ignore.any()
    with pytest.raises(DataError):
        ds.load(items[0], 4)  # an image of another class
    d = ds.describe()
    assert d["split"] == "all" and d["classes"][3] == "class03"


def test_folder_random_split_is_disjoint_deterministic_and_keeps_global_ids(fss_root):
    parts = {s: FolderDataset(fss_root, split=s, seed=1).class_ids() for s in ("train", "val", "test")}
    assert all(parts.values())
    assert sorted(c for p in parts.values() for c in p) == list(range(10))  # disjoint and covering
    assert parts == {s: FolderDataset(fss_root, split=s, seed=1).class_ids() for s in parts}
    assert parts != {s: FolderDataset(fss_root, split=s, seed=2).class_ids() for s in parts}


def test_folder_split_files_and_missing_classes(fss_root, tmp_path):
    sf = tmp_path / "splits"
    sf.mkdir()
    (sf / "trn.txt").write_text("class00\nclass01\n")
    (sf / "val.txt").write_text("class02\n")
    (sf / "test.txt").write_text("class03\nghost1\nghost2\n")
    ds = FolderDataset(fss_root, split="train", split_files=sf)
    assert ds.class_names == {0: "class00", 1: "class01"}
    with pytest.raises(DataError, match="2 of 3 test class.*ghost1"):
        FolderDataset(fss_root, split="test", split_files=sf)
    explicit = FolderDataset(fss_root, classes=["class05", "class07"])
    assert explicit.class_names == {5: "class05", 7: "class07"}


def test_fss1000_uses_the_shipped_520_240_240_split(tmp_path):
    from importlib import resources
    pkg = resources.files("fewseg") / "splits"
    names = {s: folder_mod._read_names("", (pkg / f"fss1000_{s}.txt").read_text())
             for s in ("trn", "val", "test")}
    assert [len(v) for v in names.values()] == [520, 240, 240]
    assert not set(names["trn"]) & set(names["test"]) and not set(names["val"]) & set(names["test"])
    root = tmp_path / "FSS-1000"
    for name in names["test"]:  # only the test classes are present
        d = root / name
        d.mkdir(parents=True)
        Image.new("RGB", (4, 4), (9, 9, 9)).save(d / "1.jpg")
        Image.new("L", (4, 4), 255).save(d / "1.png")
    ds = fewseg.create_dataset("fss1000", root=str(root), split="test", image_size=8)
    assert isinstance(ds, FSS1000Dataset) and len(ds.class_ids()) == 240 and ds.name == "fss1000"
    c = ds.class_ids()[0]
    assert ds.load(ds.items(c)[0], c).mask.sum() == 64
    with pytest.raises(DataError, match="520 of 520 train"):
        FSS1000Dataset(root, split="train")


def test_folder_mask_size_mismatch_names_the_files(tmp_path):
    d = make_class(tmp_path / "r", "cat", n=2)
    Image.new("L", (5, 5), 255).save(d / "2.png")
    ds = FolderDataset(tmp_path / "r", split="all")
    with pytest.raises(DataError, match=r"2\.png.*2\.jpg"):
        ds.load("cat/2.jpg", 0)


def test_folder_empty_mask_is_left_out_with_a_warning(tmp_path):
    make_class(tmp_path / "r", "dog", n=3,
               mask_fn=lambda i: shape_mask() if i != 2 else np.zeros((12, 16), bool))
    ds = FolderDataset(tmp_path / "r", split="all")
    with pytest.warns(UserWarning, match=r"no foreground.*2\.jpg"):
        items = ds.items(0)
    assert items == ["dog/1.jpg", "dog/3.jpg"]
    with pytest.raises(DataError, match="no foreground"):
        ds.load("dog/2.jpg", 0)


def test_folder_min_foreground_filters_small_masks(tmp_path):
    def mask(i):
        fg = np.zeros((12, 16), bool)
        fg[0, : i * 4] = True  # 4, 8, 12 pixels of 192
        return fg
    make_class(tmp_path / "r", "ant", n=3, mask_fn=mask)
    with pytest.warns(UserWarning, match="foreground < 0.05"):
        assert FolderDataset(tmp_path / "r", split="all", min_foreground=0.05).items(0) == ["ant/3.jpg"]


def test_folder_layout_errors_name_the_class(tmp_path):
    root = tmp_path / "r"
    make_class(root, "ok", n=2)
    nomask = root / "zebra"
    nomask.mkdir()
    Image.new("RGB", (4, 4)).save(nomask / "1.jpg")
    with pytest.raises(DataError, match="zebra has images but no masks"):
        FolderDataset(root, split="all")
    for p in nomask.iterdir():
        p.unlink()
    with pytest.raises(DataError, match="zebra is empty"):
        FolderDataset(root, split="all")


def test_folder_image_without_mask_is_skipped_with_a_warning(tmp_path):
    d = make_class(tmp_path / "r", "owl", n=3)
    (d / "3.png").unlink()
    with pytest.warns(UserWarning, match=r"3\.jpg"):
        ds = FolderDataset(tmp_path / "r", split="all")
    assert ds.items(0) == ["owl/1.jpg", "owl/2.jpg"]


def test_folder_corrupt_mask_raises_naming_it(tmp_path):
    d = make_class(tmp_path / "r", "bee", n=2)
    (d / "2.png").write_bytes(b"\x89PNG broken")
    ds = FolderDataset(tmp_path / "r", split="all")  # construction decodes nothing
    with pytest.raises(DataError, match=r"bee/2\.png"):
        ds.items(0)


# --- label maps ---------------------------------------------------------------------------------------
N_LISTED = 6  # classes 1..6 (0 background), 7 unlisted, 8 "speck" listed but tiny


def make_labelmap(root: Path, n_images: int = 12, size=(24, 32)) -> Path:
    """Image i holds classes 1+i%6 and 1+(i+1)%6 (large), unlisted id 7, a one-pixel speck of 8, a 255 row."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "splits").mkdir()
    h, w = size
    rng = np.random.default_rng(0)
    for i in range(n_images):
        lab = np.zeros(size, np.uint8)
        lab[2:10, 2:14] = 1 + i % N_LISTED
        lab[12:20, 16:30] = 1 + (i + 1) % N_LISTED
        lab[20:23, 0:6] = 7
        lab[0, w - 1] = 8
        lab[h - 1, :] = 255
        stem = f"img{i:03d}"
        Image.fromarray(lab, "L").save(root / "labels" / f"{stem}.png")
        photo = rng.integers(0, 255, size + (3,)).astype(np.uint8)
        Image.fromarray(photo, "RGB").save(root / "images" / f"{stem}.jpg")
    names = ["background", "hat", "shirt", "shoe", "bag", "belt", "scarf"]
    (root / "classes.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(names)) + "8 speck\n")
    (root / "splits" / "first.txt").write_text("".join(f"img{i:03d}\n" for i in range(n_images // 2)))
    return root


@pytest.fixture
def lm_root(tmp_path):
    return make_labelmap(tmp_path / "lm")


def test_labelmap_load_mask_ignore_and_unlisted_background(lm_root):
    ds = LabelMapDataset(lm_root, split="all", image_size=32, resize="stretch", min_foreground=0.0)
    assert isinstance(fewseg.create_dataset("labelmap", root=str(lm_root), split="all"), LabelMapDataset)
    assert 7 not in ds.class_names and 0 not in ds.class_names and 8 in ds.class_names
    lab = np.asarray(Image.open(lm_root / "labels" / "img000.png")).astype(np.int64)
    s = ds.load("img000", 1)
    assert s.image.shape == (3, 32, 32) and s.mask.shape == (1, 32, 32) and s.ignore.dtype == torch.bool
    _, ref = resize_pair(np.zeros(lab.shape + (3,), np.uint8), lab, 32, "stretch")
    assert torch.equal(s.mask[0], (ref == 1).float())
    assert torch.equal(s.ignore[0], ref == 255) and s.ignore.any()
    assert not s.mask[0][ref == 7].any()  # unlisted id 7 is background
    assert not s.mask[0][ref == 255].any()


def test_labelmap_min_foreground_filters_specks(lm_root):
    assert 8 not in LabelMapDataset(lm_root, split="all").usable  # default 0.01 drops the one-pixel class
    assert 8 in LabelMapDataset(lm_root, split="all", min_foreground=0.0).usable


def test_labelmap_folds_are_disjoint_and_cover_usable_classes(lm_root):
    usable = LabelMapDataset(lm_root, split="all").usable
    assert usable == [1, 2, 3, 4, 5, 6]
    tests = [LabelMapDataset(lm_root, split="test", fold=k, n_folds=4).class_ids() for k in range(4)]
    assert [len(t) for t in tests] == [2, 2, 1, 1]
    assert sorted(c for t in tests for c in t) == usable
    assert tests == fold_blocks(usable, 4)
    for k in range(4):
        parts = {s: LabelMapDataset(lm_root, split=s, fold=k, n_folds=4, seed=3).class_ids()
                 for s in ("train", "val", "test")}
        assert len(parts["val"]) >= 1 and len(parts["train"]) >= 1
        assert sorted(c for p in parts.values() for c in p) == usable  # disjoint and covering
    everything = LabelMapDataset(lm_root, split="train", fold="all")
    assert everything.class_ids() == usable
    assert LabelMapDataset(lm_root, split="val", fold="all").class_ids() == []
    d = everything.describe()
    assert d["fold"] == "all" and d["n_folds"] == 4 and d["min_foreground"] == 0.01 and len(d["classes"]) == 6


def test_labelmap_image_split_and_bad_split_file(lm_root):
    ds = LabelMapDataset(lm_root, split="all", image_split="first")
    assert all(int(k[3:]) < 6 for c in ds.class_ids() for k in ds.items(c))
    (lm_root / "splits" / "broken.txt").write_text("img000\nimg999\n")
    with pytest.raises(DataError, match=r"broken\.txt.*img999"):
        LabelMapDataset(lm_root, split="all", image_split="broken")


def test_labelmap_pad_region_is_ignore(lm_root):
    ds = LabelMapDataset(lm_root, split="all", image_size=16, resize="pad")
    s = ds.load("img001", ds.class_ids()[0])
    assert s.ignore[0, :2].all() and s.ignore[0, -2:].all()  # 24x32 -> 12x16 centred: rows 0-1 and 14-15
    assert float(s.image[:, :2].abs().max()) == 0.0


def test_labelmap_size_mismatch_names_both_files(lm_root):
    Image.new("L", (5, 5)).save(lm_root / "labels" / "img004.png")
    ds = LabelMapDataset(lm_root, split="all")
    with pytest.raises(DataError, match=r"img004\.png.*img004\.jpg"):
        ds.load("img004", 1)


def test_labelmap_scan_is_cached_in_memory_and_on_disk(lm_root, monkeypatch, tmp_path):
    LabelMapDataset(lm_root, split="all")
    files = list((tmp_path / "fewseg-cache").glob("labelmap-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["version"] == 1

    def boom(path):
        raise AssertionError("label maps were scanned again")
    monkeypatch.setattr(labelmap_scan, "_fractions_of", boom)
    labelmap_scan._scan.cache_clear()  # drop the in-memory cache: the disk copy must serve
    assert LabelMapDataset(lm_root, split="all").usable == [1, 2, 3, 4, 5, 6]
    time.sleep(0.01)
    Image.fromarray(np.zeros((24, 32), np.uint8), "L").save(lm_root / "labels" / "img000.png")
    with pytest.raises(AssertionError, match="scanned again"):  # a changed file invalidates the cache
        LabelMapDataset(lm_root, split="all")


def test_labelmap_decoded_array_cache(lm_root, monkeypatch):
    ds = LabelMapDataset(lm_root, split="all", cache=True)
    plain = LabelMapDataset(lm_root, split="all", cache=False)
    first = ds.load("img002", 3)
    assert torch.equal(plain.load("img002", 3).image, first.image)  # caching changes nothing
    with monkeypatch.context() as m:
        m.setattr(lm, "read_image", lambda p: (_ for _ in ()).throw(AssertionError("decoded again")))
        again = ds.load("img002", 4)
    assert torch.equal(first.image, again.image) and torch.equal(first.ignore, again.ignore)


def test_named_sets_default_root_is_relative_to_the_working_dir(tmp_path, monkeypatch):
    work = tmp_path / "project"
    work.mkdir()
    make_labelmap(tmp_path / "shared" / "data" / "camvid")
    monkeypatch.chdir(work)
    ds = fewseg.create_dataset("camvid", split="all")  # ../shared/data/camvid; id 0 is a real class here
    assert ds.name == "camvid" and ds.root == (tmp_path / "shared/data/camvid").resolve()
    assert 0 in ds.usable  # camvid has no background id (its 0 is "sky")
    with pytest.raises(DataError, match="shared/data/ccp"):
        fewseg.create_dataset("ccp", split="all")


def test_real_ccp_fold0_loads_one_sample():
    if not (CCP / "classes.txt").is_file():
        pytest.skip(f"real CCP data not found at {CCP}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = fewseg.create_dataset("ccp", root=str(CCP), split="test", fold=0, image_size=64)
    c = ds.class_ids()[0]
    s = ds.load(ds.items(c)[0], c)
    assert s.image.shape == (3, 64, 64) and s.mask.sum() > 0
    assert ds.describe()["fold"] == 0 and len(ds.class_ids()) >= 5


class _ConstantLearner:
    """Predicts the same probability everywhere (a fixed predictor, so the counts are known exactly)."""

    def __init__(self, p):
        self.p = p

    def adapt(self, support_x, support_y, support_ignore=None):
        return self

    def predict(self, images):
        return torch.full((images.shape[0], 1, images.shape[2], images.shape[3]), self.p)


@pytest.mark.parametrize("resize", ["pad", "stretch"])
def test_evaluation_scores_at_the_original_label_resolution(lm_root, resize):
    from fewseg.data.sampler import EpisodeSampler
    from fewseg.data.transforms import content_box, to_original
    from fewseg.engine.evaluator import evaluate

    ds = LabelMapDataset(lm_root, split="all", image_size=16, resize=resize)
    eps = EpisodeSampler(ds, 1, 2, seed=0).fixed_episodes(3)
    fg = valid = 0
    for ep in eps:
        for key in ep.keys[1:]:
            lab = np.asarray(Image.open(lm_root / "labels" / f"{key}.png")).astype(np.int64)  # 24x32
            fg += int(((lab == ep.class_id) & (lab != 255)).sum())
            valid += int((lab != 255).sum())
    # all background: fg IoU 0, bg IoU = (valid - fg) / valid; all foreground: fg IoU = fg / valid, bg IoU 0
    # -- counted on the 24x32 label maps (ignore pixels nowhere), not on the 16x16 network input
    none = evaluate(_ConstantLearner(0.0), eps, full_resolution=ds.full_resolution)
    every = evaluate(_ConstantLearner(1.0), eps, full_resolution=ds.full_resolution)
    assert none["fb_iou"] == pytest.approx(0.5 * (valid - fg) / valid)
    assert every["fb_iou"] == pytest.approx(0.5 * fg / valid)
    small = evaluate(_ConstantLearner(1.0), eps)
    assert small["fb_iou"] != pytest.approx(every["fb_iou"])
    box = content_box(24, 32, 16, "pad")
    assert box == (2, 0, 12, 16)
    logits = torch.full((1, 1, 16, 16), -5.0)
    logits[..., 2:14, :] = 3.0
    assert torch.equal(to_original(logits, box, 24, 32), torch.full((1, 1, 24, 32), 3.0))
    assert LabelMapDataset(lm_root, split="all", image_size=16, resize="crop").full_resolution("img000", 1) is None


def test_folder_evaluation_scores_at_the_mask_files_resolution(tmp_path):
    from fewseg.data.sampler import EpisodeSampler
    from fewseg.engine.evaluator import evaluate

    root = tmp_path / "fss"
    for k in range(2):
        make_class(root, f"class{k}", n=4, size=(12, 16))
    ds = FolderDataset(root, split="all", image_size=8, resize="pad")
    eps = EpisodeSampler(ds, 1, 2, seed=0).fixed_episodes(2)
    fg = total = 0
    for ep in eps:
        for key in ep.keys[1:]:
            m = np.asarray(Image.open(ds._paths[key][2])) > 127
            fg, total = fg + int(m.sum()), total + m.size
    every = evaluate(_ConstantLearner(1.0), eps, full_resolution=ds.full_resolution)
    assert every["fb_iou"] == pytest.approx(0.5 * fg / total)


@pytest.mark.slow
def test_real_ccp_meta_train_then_cross_dataset_camvid_at_original_resolution(tmp_path):
    camvid = CCP.parent / "camvid"
    if not (CCP / "classes.txt").is_file() or not (camvid / "classes.txt").is_file():
        pytest.skip(f"real CCP/CamVid data not found under {CCP.parent}")
    from fewseg.config import load_config
    from fewseg.engine.session import evaluate_checkpoint
    from fewseg.engine.trainer import Trainer
    cfg = load_config("ccp_maml", [f"data.root={CCP}", "data.image_size=32", "train.iterations=2", "train.val_every=2",
                               "train.val_episodes=2", f"output={tmp_path}"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(cfg, progress=False).fit()
        record = evaluate_checkpoint(tmp_path, shots=[1], episodes=2, baselines=["zero-shot"], dataset="camvid",
                                     data_root=str(camvid), log=lambda *_: None)
    assert record["scored_at"] == "original label resolution"
    assert 0 <= record["results"]["1"]["maml"]["miou"] <= 1


# --- one pairing rule for class folders and support folders -------------------------------------------------
def test_class_folders_and_support_folders_pair_images_and_masks_by_one_rule(tmp_path):
    from fewseg.data.pairing import pair_images
    from fewseg.engine.session import find_support_pairs
    d = tmp_path / "root" / "cls"
    d.mkdir(parents=True)
    fg = (np.eye(6, dtype=np.uint8) * 255)
    for name in ("a.jpg", "a.png", "a_mask.png", "b.png", "b_mask.png", "c.jpg", "c.PNG", "d.jpeg", ".e.png",
                 "f_mask.png", "notes.txt"):
        Image.fromarray(fg).save(d / name, "PNG")
    (d / "g.png").mkdir()                                             # a folder named like an image
    pairs = pair_images(d)
    assert [(i.name, m and m.name) for i, m in pairs] == [("a.jpg", "a_mask.png"), ("b.png", "b_mask.png"),
                                                          ("c.jpg", "c.PNG"), ("d.jpeg", None)]
    with pytest.warns(UserWarning, match="without a mask: d.jpeg"):
        ds = FolderDataset(tmp_path / "root", split="all", image_size=8)
    assert sorted((img, mask) for _, img, mask in ds._paths.values()) == [(i, m) for i, m in pairs if m]
    with pytest.raises(DataError, match=r"d\.jpeg has no mask \(looked for .*d_mask\.png, .*d\.png\)"):
        find_support_pairs(d)
    (d / "d.jpeg").unlink()
    assert find_support_pairs(d) == [(i, m) for i, m in pairs if m]
    (d / "masks").mkdir()                                             # masks/<stem>.png instead
    Image.fromarray(fg).save(d / "masks" / "a.png")
    with pytest.raises(DataError, match=r"b\.png has no mask \(looked for .*masks/b\.png\)"):
        find_support_pairs(d)
    assert pair_images(d, d / "masks")[0] == (d / "a.jpg", d / "masks" / "a.png")
