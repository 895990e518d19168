"""Bad input, fuzzed (hypothesis, derandomized, bounded examples): the image, mask and label-map readers, the dataset
sources, the support-folder reader and the config loader either work or raise fewseg's own error type with one
line -- never a hang, an interpreter crash, another exception type or a silently wrong mask."""
import io
import os
import shutil
import struct
import tempfile
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fewseg.config import config_from_dict, config_keys, load_config
from fewseg.data.io import image_size, read_binary_mask, read_image, read_label_map
from fewseg.data.sources.folder import FolderDataset
from fewseg.data.sources.labelmap import LabelMapDataset
from fewseg.engine.session import find_support_pairs
from fewseg.errors import ConfigError, DataError, FewsegError

# CI: deterministic, no per-example deadline (a shared 2-core machine), the whole file well under a minute.
# FEWSEG_FUZZ_EXAMPLES=2000 FEWSEG_FUZZ_RANDOM=1 runs a deeper, randomized search locally.
N = int(os.environ.get("FEWSEG_FUZZ_EXAMPLES", "250"))  # ~20 s on 2 cores
FUZZ = settings(max_examples=N, deadline=None, derandomize=not os.environ.get("FEWSEG_FUZZ_RANDOM"),
                database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
FEW = settings(FUZZ, max_examples=max(1, N // 3))


@contextmanager
def scratch():
    d = Path(tempfile.mkdtemp(prefix="fewseg-fuzz-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def one_line(exc: BaseException) -> None:
    assert isinstance(exc, FewsegError), f"{type(exc).__name__}: {exc}"
    text = str(exc)
    assert text and "\n" not in text and len(text) < 2000 and "Traceback" not in text, text


def check_reader(read, path):
    """The reader's result is well formed, or it raised DataError with one line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = read(path)
    except DataError as exc:
        one_line(exc)
        return None
    if read is read_image:
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and out.size
    elif read is read_binary_mask:
        fg, ignore = out
        assert fg.dtype == bool and ignore.dtype == bool and fg.shape == ignore.shape and fg.ndim == 2
        assert not (fg & ignore).any()
    elif read is read_label_map:
        assert out.ndim == 2 and out.dtype.kind in "iu" and (out.size == 0 or out.min() >= 0)
    else:
        assert len(out) == 2 and all(isinstance(v, int) for v in out)
    return out


READERS = (read_image, read_binary_mask, read_label_map, image_size)
MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "I", "I;16", "I;16B", "F", "YCbCr", "LAB", "HSV"]
FORMATS = ["PNG", "TIFF", "BMP", "GIF", "JPEG", "WEBP", "PPM"]


def encode(mode: str, w: int, h: int, data: bytes, fmt: str) -> bytes | None:
    """An image of ``mode`` filled from ``data``, saved as ``fmt`` (None when Pillow cannot write that pair)."""
    rng = np.random.default_rng(list(data[:8]) or [0])
    if mode == "I":
        arr = rng.choice(np.array([0, 1, 255, 65535, 2**31 - 1, -7, 2**20], np.int32), (h, w))
        im = Image.fromarray(arr.astype(np.int32))
    elif mode == "F":
        arr = rng.choice(np.array([0, 1, 0.5, 255, np.nan, np.inf, -3, 1e9], np.float32), (h, w))
        im = Image.fromarray(arr.astype(np.float32))
    elif mode.startswith("I;16"):
        arr = rng.choice(np.array([0, 1, 255, 300, 65535], np.uint16), (h, w))
        im = Image.fromarray(arr.astype(np.uint16))
        if mode != "I;16":
            try:
                im = im.convert(mode)
            except ValueError:
                return None
    else:
        im = Image.new(mode, (w, h))
        need = len(im.tobytes())
        im.frombytes((data * (need // max(len(data), 1) + 1))[:need] if data else bytes(need))
    buf = io.BytesIO()
    try:
        im.save(buf, fmt)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return buf.getvalue()


sizes = st.sampled_from([(1, 1), (1, 7), (7, 1), (5, 3), (16, 16), (3, 64), (64, 3)])


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".png", ".jpg", ".tif", ".bmp", ".gif", ""]))
def test_random_bytes_as_images_masks_and_label_maps(data, suffix):
    with scratch() as d:
        path = d / f"f{suffix}"
        path.write_bytes(data)
        for read in READERS:
            check_reader(read, path)


@FUZZ
@given(mode=st.sampled_from(MODES), fmt=st.sampled_from(FORMATS), size=sizes, data=st.binary(min_size=1, max_size=64),
       damage=st.sampled_from(["none", "truncate", "flip"]), where=st.floats(0, 1), byte=st.integers(0, 255))
def test_images_of_every_mode_and_format_whole_truncated_or_damaged(mode, fmt, size, data, damage, where, byte):
    blob = encode(mode, *size, data, fmt)
    if blob is None:
        return
    if damage == "truncate":
        blob = blob[: int(len(blob) * where)]
    elif damage == "flip":
        b = bytearray(blob)
        b[min(int(len(b) * where * 0.2), len(b) - 1)] = byte  # mostly in the header
        blob = bytes(b)
    with scratch() as d:
        path = d / f"x.{fmt.lower()}"
        path.write_bytes(blob)
        for read in READERS:
            out = check_reader(read, path)
            if out is not None and damage == "none" and read is not image_size:
                shape = out[0].shape if read is read_binary_mask else out.shape
                assert shape[:2] == (size[1], size[0])


ENCODINGS = ["L 0/255", "L 0/1", "L 0/7", "1", "P", "P coloured", "RGB", "RGBA alpha", "I;16 0/65535", "LA",
             "L antialiased"]


def encode_mask(fg: np.ndarray, encoding: str) -> Image.Image:
    u8 = fg.astype(np.uint8)
    if encoding == "L 0/255":
        return Image.fromarray(u8 * 255)
    if encoding == "L 0/1":
        return Image.fromarray(u8)
    if encoding == "L 0/7":
        return Image.fromarray(u8 * 7)
    if encoding == "1":
        return Image.fromarray(fg)
    if encoding in ("P", "P coloured"):
        im = Image.fromarray(u8, "P")
        im.putpalette([0, 0, 0, 255, 255, 255] if encoding == "P" else [20, 200, 20, 200, 10, 10])
        return im
    if encoding == "RGB":
        return Image.fromarray(np.stack([u8 * 255, u8 * 0, u8 * 128], axis=2))
    if encoding == "RGBA alpha":  # constant colour, the mask in the alpha channel
        return Image.fromarray(np.dstack([np.full(fg.shape, 9, np.uint8)] * 3 + [u8 * 255]), "RGBA")
    if encoding == "I;16 0/65535":
        return Image.fromarray(fg.astype(np.uint16) * 65535)
    if encoding == "LA":
        return Image.fromarray(np.dstack([u8 * 255, np.full(fg.shape, 255, np.uint8)]), "LA")
    # anti-aliased edges: foreground 255, background 0, a few in-between values on both sides of 127
    v = np.where(fg, 255, 0).astype(np.uint8)
    v[0, 0] = 200 if fg[0, 0] else 40
    return Image.fromarray(v)


@FUZZ
@given(shape=st.tuples(st.integers(1, 24), st.integers(1, 24)), seed=st.integers(0, 2**16),
       encoding=st.sampled_from(ENCODINGS), fmt=st.sampled_from(["PNG", "TIFF", "BMP"]))
def test_every_mask_encoding_decodes_to_the_drawn_foreground(shape, seed, encoding, fmt):
    """Not a silently wrong mask: whatever the encoding, the decoded foreground is the one drawn."""
    fg = np.random.default_rng(seed).random(shape) < 0.4
    fg.flat[0] = True  # at least one foreground pixel
    im = encode_mask(fg, encoding)
    with scratch() as d:
        path = d / f"m.{fmt.lower()}"
        try:
            im.save(path, fmt)
        except (OSError, ValueError):
            return
        with Image.open(path) as back:
            if back.mode != im.mode or not np.array_equal(np.asarray(back), np.asarray(im)):
                return  # the format cannot hold this encoding (e.g. BMP drops alpha): nothing to decode
        got, ignore = read_binary_mask(path)
        assert got.shape == fg.shape and not ignore.any()
        assert np.array_equal(got, fg), encoding


@FEW
@given(name=st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\x00"),
                    min_size=1, max_size=30))
def test_unicode_and_spaces_in_paths(name):
    name = name.strip(". ") or "x"
    with scratch() as d:
        folder = d / f"{name} dir"  # at most 30 characters (no NUL, slash or surrogate): a valid name
        folder.mkdir()
        path = folder / f"{name} .png"
        Image.fromarray(np.eye(4, dtype=np.uint8) * 255).save(path)
        fg, _ = read_binary_mask(path)
        assert fg.sum() == 4
        assert read_image(path).shape == (4, 4, 3) and image_size(path) == (4, 4)


def test_symlink_loops_directories_and_fifos_are_refused_in_one_line(tmp_path):
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    (tmp_path / "dir.png").mkdir()
    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(tmp_path / "fifo.png")  # reading it would block forever
    paths = [loop, tmp_path / "dir.png", dangling, tmp_path / "missing.png", tmp_path / "fifo.png"]
    for path in paths:
        for read in READERS:
            with pytest.raises(DataError) as info:
                read(path)
            one_line(info.value)


def png_of_zeros(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of zeros, compressed row by row (never the whole image in memory)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    comp, row, parts = zlib.compressobj(9), b"\0" * (width + 1), []
    for _ in range(height):
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def test_odd_sizes_1x1_1x5000_and_10000x10000_without_exhausting_memory(tmp_path):
    import tracemalloc
    for w, h in [(1, 1), (1, 5000), (5000, 1)]:
        Image.fromarray(np.full((h, w), 255, np.uint8)).save(tmp_path / f"{w}x{h}.png")
        fg, _ = read_binary_mask(tmp_path / f"{w}x{h}.png")
        assert fg.shape == (h, w) and fg.all()
        assert read_image(tmp_path / f"{w}x{h}.png").shape == (h, w, 3)
    big = tmp_path / "10000x10000.png"
    big.write_bytes(png_of_zeros(10000, 10000))  # 100 million pixels, ~100 KB on disk
    tracemalloc.start()
    for read in (read_image, read_binary_mask, read_label_map):
        with pytest.raises(DataError, match="10000x10000.*FEWSEG_MAX_PIXELS") as info:
            read(big)  # refused from the header: nothing decoded
        one_line(info.value)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20_000_000
    assert image_size(big) == (10000, 10000)


def test_slivers_resize_in_every_mode_in_bounded_memory():
    import tracemalloc

    from fewseg.data.transforms import resize_arrays
    for H, W in [(1, 5000), (5000, 1), (2, 100_000)]:
        img, lab = np.zeros((H, W, 3), np.uint8), np.ones((H, W), np.uint8)
        for mode in ("stretch", "pad", "crop"):
            tracemalloc.start()
            im, out = resize_arrays(img, lab, 64, mode)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert im.shape == (64, 64, 3) and out.shape == (64, 64) and (out == 1).any()
            assert peak < 50_000_000, (H, W, mode, peak)


# --- dataset sources ------------------------------------------------------------------------------------------
file_kinds = st.sampled_from(["photo", "mask", "empty mask", "garbage", "empty file", "wrong size mask",
                              "16-bit mask", "palette mask", "cmyk photo", "rgba photo", "nothing"])


def write_kind(path: Path, kind: str, rng: np.random.Generator) -> None:
    if kind == "nothing":
        return
    if kind == "garbage":
        path.write_bytes(rng.bytes(int(rng.integers(1, 200))))
    elif kind == "empty file":
        path.write_bytes(b"")
    elif kind in ("photo", "cmyk photo", "rgba photo"):
        im = Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8))
        im = im.convert({"photo": "RGB", "cmyk photo": "CMYK", "rgba photo": "RGBA"}[kind])
        im.save(path, {"photo": "JPEG", "cmyk photo": "TIFF", "rgba photo": "PNG"}[kind])  # content, not suffix
    else:
        fg = rng.random((12, 10)) < 0.5
        if kind == "empty mask":
            fg[:] = False
        if kind == "wrong size mask":
            fg = rng.random((5, 5)) < 0.5
        im = encode_mask(fg, {"16-bit mask": "I;16 0/65535", "palette mask": "P"}.get(kind, "L 0/255"))
        im.save(path, "PNG")


@FEW
@given(classes=st.lists(st.tuples(st.sampled_from(["cat", "dög", "a b", "ünï cødé", "x" * 40, ".hidden", "1"]),
                                  st.lists(st.tuples(file_kinds, file_kinds), min_size=0, max_size=4)),
                        min_size=1, max_size=4, unique_by=lambda c: c[0]),
       split=st.sampled_from(["all", "train", "val", "test"]), resize=st.sampled_from(["stretch", "pad", "crop"]),
       seed=st.integers(0, 3))
def test_folder_dataset_on_random_class_folders(classes, split, resize, seed):
    rng = np.random.default_rng(seed)
    with scratch() as root:
        for name, files in classes:
            (root / name).mkdir()
            for i, (image_kind, mask_kind) in enumerate(files):
                write_kind(root / name / f"{i}.jpg", image_kind, rng)
                write_kind(root / name / f"{i}.png", mask_kind, rng)
        (root / "cat_link").symlink_to(root)  # a folder that loops back to the root
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = FolderDataset(root, split=split, image_size=16, resize=resize, seed=seed)
                for c in ds.class_ids():
                    for key in ds.items(c):
                        s = ds.load(key, c)
                        assert s.image.shape == (3, 16, 16) and s.mask.shape == (1, 16, 16)
                        assert float(s.mask.max()) <= 1 and not (s.mask.bool() & s.ignore).any()
                        full = ds.full_resolution(key, c)
                        assert full is None or full[0].shape[-2:] == full[1].shape[-2:]
        except FewsegError as exc:
            one_line(exc)


label_kinds = st.sampled_from(["L", "P", "I;16", "RGB grey", "RGB colour", "garbage", "wrong size", "32-bit"])


def write_label(path: Path, kind: str, rng: np.random.Generator) -> None:
    ids = rng.choice(np.array([0, 1, 2, 3, 255]), (9, 11))
    if kind == "garbage":
        path.write_bytes(rng.bytes(50))
    elif kind == "wrong size":
        Image.fromarray(ids[:4, :4].astype(np.uint8)).save(path)
    elif kind == "I;16":
        Image.fromarray((ids * 257).astype(np.uint16)).save(path)
    elif kind == "32-bit":
        Image.fromarray(ids.astype(np.int32) * 1000003).save(path.with_suffix(".tif"))
        path.with_suffix(".tif").rename(path)
    elif kind == "P":
        Image.fromarray(ids.astype(np.uint8), "P").save(path)
    elif kind.startswith("RGB"):
        rgb = np.repeat(ids.astype(np.uint8)[:, :, None], 3, axis=2)
        if kind == "RGB colour":
            rgb[0, 0] = (1, 2, 3)
        Image.fromarray(rgb).save(path)
    else:
        Image.fromarray(ids.astype(np.uint8)).save(path)


@FEW
@given(labels=st.lists(label_kinds, min_size=1, max_size=6),
       classes_txt=st.sampled_from([b"0 bg\n1 a\n2 b\n3 c\n", b"0 bg\n1 a\n1 again\n", b"garbage line\n",
                                    b"# only a comment\n", b"0 bg\n255 void\n1 a\n2 b\n", b"\xff\xfe\x00bad"]),
       fold=st.sampled_from([0, 1, "all"]), split=st.sampled_from(["train", "val", "test", "all"]),
       seed=st.integers(0, 3))
def test_labelmap_dataset_on_random_label_maps(labels, classes_txt, fold, split, seed):
    rng = np.random.default_rng(seed)
    with scratch() as root:
        os.environ["FEWSEG_CACHE"] = str(root / "cache")
        (root / "images").mkdir()
        (root / "labels").mkdir()
        (root / "classes.txt").write_bytes(classes_txt)
        for i, kind in enumerate(labels):
            Image.fromarray(rng.integers(0, 255, (9, 11, 3), dtype=np.uint8)).save(root / "images" / f"{i}.jpg")
            write_label(root / "labels" / f"{i}.png", kind, rng)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = LabelMapDataset(root, split=split, fold=fold, n_folds=2, image_size=16, min_images=1,
                                     min_foreground=0.0, seed=seed)
                for c in ds.class_ids():
                    for key in ds.items(c):
                        s = ds.load(key, c)
                        assert s.image.shape == (3, 16, 16) and s.mask.shape == (1, 16, 16)
                        mask, ignore, _ = ds.full_resolution(key, c)
                        assert mask.shape == ignore.shape and not (mask.bool() & ignore).any()
        except FewsegError as exc:
            one_line(exc)
        finally:
            os.environ.pop("FEWSEG_CACHE", None)


# --- the support-folder reader (engine/session.py) -------------------------------------------------------------
support_names = st.sampled_from(["a.jpg", "a.png", "a_mask.png", "b.jpeg", "b.png", "c.png", "c_mask.png",
                                 "d.JPG", "d.PNG", "e f.jpg", "e f.png", "ü.bmp", "ü_mask.png", "notes.txt",
                                 "masks/a.png", "masks/b.png", "masks/c.png", "images/a.jpg", "images/c.png",
                                 "masks/z.png", ".hidden.png"])


@FUZZ
@given(names=st.lists(support_names, unique=True, max_size=10), loop=st.booleans(), as_dirs=st.booleans())
def test_find_support_pairs_on_random_support_folders(names, loop, as_dirs):
    with scratch() as d:
        folder = d / "support"
        folder.mkdir()
        for n in names:
            (folder / n).parent.mkdir(exist_ok=True)
            if as_dirs and n == "a.jpg":
                (folder / n).mkdir()  # a folder named like an image
            else:
                Image.fromarray(np.eye(4, dtype=np.uint8) * 255).save(folder / n, "PNG")
        if loop:
            (folder / "loop.png").symlink_to(folder / "loop.png")
        try:
            pairs = find_support_pairs(folder)
        except FewsegError as exc:
            one_line(exc)
            return
        images = [img for img, _ in pairs]
        assert len(set(images)) == len(images) and pairs
        for img, mask in pairs:
            assert mask.exists() and img != mask
            assert not img.stem.endswith("_mask")
            assert mask not in images  # a mask is never also used as a support image


# --- the config loader ------------------------------------------------------------------------------------------
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
KEYS = [key for key, *_ in config_keys()]


@FUZZ
@given(tree=st.dictionaries(st.sampled_from(["name", "seed", "device", "output", "data", "model", "algorithm",
                                             "train", "eval", "extra"]), yaml_values, max_size=5))
def test_random_config_trees(tree):
    try:
        cfg = config_from_dict(tree)
    except ConfigError as exc:
        one_line(exc)
        return
    assert cfg.to_dict()


def setting(cfg, key: str):
    """The value of a dotted config key, e.g. ``setting(cfg, "train.outer_lr")``."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


@FUZZ
@given(overrides=st.lists(st.tuples(st.sampled_from(KEYS), yaml_values), max_size=4))
def test_random_values_at_every_key(overrides):
    texts = [f"{key}={yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix('...').strip()}"
             for key, value in overrides]
    try:
        cfg = config_from_dict({}, texts)
    except ConfigError as exc:
        one_line(exc)
        return
    for key, _ in overrides:  # what was accepted is in range
        value = setting(cfg, key)
        if isinstance(value, float):
            assert not np.isnan(value), key


@FUZZ
@given(text=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_random_yaml_text(text):
    with scratch() as d:
        path = d / "r.yaml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            load_config(path)
        except ConfigError as exc:
            one_line(exc)


HOSTILE = {
    "deep list": "x: " + "[" * 3000 + "]" * 3000,
    "deep map": "x: " + "{a: " * 3000 + "1" + "}" * 3000,
    "deep block": "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v: 1\n",
    "billion laughs": "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)),
    "laughs at a known key": "l0: &l0 [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 7)) + "data: {options: {x: *l6}}\n",
    "recursive alias": "data: &d {options: {me: *d}}\n",
    "python object tag": "name: !!python/object/apply:os.system ['touch pwned']\n",
    "huge int": "seed: " + "9" * 5000 + "\n",
    "binary": "\x00\x01\x02",
    "list": "[1, 2, 3]",
    "anchors to a section": "base: &b {iterations: 2}\ntrain: *b\n",
    "merge key": "base: &b {iterations: 2}\ntrain: {<<: *b, shots: 3}\n",
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_yaml_is_one_line_bounded_and_runs_nothing(tmp_path, monkeypatch, case):
    import tracemalloc
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "r.yaml"
    path.write_text(HOSTILE[case])
    aliases = "laughs" in case or "alias" in case  # the expansion hazard; deep nesting is refused by depth
    if aliases:
        tracemalloc.start()  # (slows parsing, so only where it guards something)
    try:
        with pytest.raises(ConfigError) as info:
            load_config(path)
        peak = tracemalloc.get_traced_memory()[1] if aliases else 0
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2 ** 20  # nothing expanded (an alias bomb would build ~10^9 nodes), no timing asserted
    one_line(info.value)
    assert len(str(info.value)) < 600 and not (tmp_path / "pwned").exists()


def test_a_key_with_an_alias_bomb_below_the_limit_prints_a_short_message(tmp_path):
    """An error about a huge (shared) value shows its start, never the expanded whole."""
    path = tmp_path / "r.yaml"
    path.write_text("l0: &l0 [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 4)) + "train: {iterations: *l3}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("text,key,want", [("train: {outer_lr: 1e-3}", "train.outer_lr", 1e-3),
                                           ("algorithm: {inner_lr: 5E-2}", "algorithm.inner_lr", 0.05),
                                           ("train: {grad_clip: 1.0e+1}", "train.grad_clip", 10.0),
                                           ("algorithm: {options: {kl_weight: 1e-4}}", "algorithm.options",
                                            {"kl_weight": 1e-4})])
def test_exponent_floats_read_as_floats(tmp_path, text, key, want):
    """YAML 1.1 reads 1e-3 as a string; a config file means the float (in an algorithm's options too)."""
    path = tmp_path / "r.yaml"
    path.write_text(text)
    got = setting(load_config(path), key)
    assert got == want
    assert isinstance(got["kl_weight"] if isinstance(got, dict) else got, float)


@pytest.mark.parametrize("key", ["train.outer_lr", "algorithm.inner_lr", "train.grad_clip"])
def test_exponent_floats_read_as_floats_in_overrides(key):
    got = setting(config_from_dict({}, [f"{key}=1e-3"]), key)
    assert got == 1e-3 and isinstance(got, float)
