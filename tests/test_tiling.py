"""Large images at native resolution (issue 29): tiled prediction with overlap blending, support patches, patch
episodes, and ``fewseg adapt/predict --tile``."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from userpath import write_support

import fewseg
from fewseg.cli import main
from fewseg.data.sampler import EpisodeSampler
from fewseg.data.sources.folder import FolderDataset
from fewseg.data.sources.labelmap import LabelMapDataset
from fewseg.errors import ConfigError
from fewseg.preprocess import Preprocessing
from fewseg.segmenter import AdaptedSegmenter, load_adapted
from fewseg.tiling import (
    Tiling,
    blend_window,
    select_patches,
    tile_boxes,
    tile_starts,
    tiled_logits,
)


def equivariant_net(seed: int = 0) -> torch.nn.Module:
    """Fully convolutional (translation-equivariant away from its zero padding), receptive radius 4."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, padding=2), torch.nn.Tanh(), torch.nn.Conv2d(8, 1, 5, padding=2))
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def disk_image(h: int = 100, w: int = 90, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 [h,w,3] noise with a bright disk that crosses every tile border of the tests, and its mask."""
    yy, xx = np.mgrid[:h, :w]
    disk = (yy - h // 2) ** 2 + (xx - w // 2) ** 2 < (min(h, w) // 3) ** 2
    rng = np.random.default_rng(seed)
    img = rng.random((h, w, 3)) * 0.2 + disk[..., None] * np.array([0.8, 0.5, 0.1])
    return img.astype(np.float32), disk


def adapted_with(net: torch.nn.Module, size: int, tile=None, batch_size: int = 8) -> AdaptedSegmenter:
    tiling = None if tile is None else Tiling(*tile) if isinstance(tile, tuple) else Tiling(tile)
    return AdaptedSegmenter(net, Preprocessing(size, "stretch", 3), 0.5, {"name": "test"}, batch_size=batch_size,
                            tiling=tiling)


# --- windows and weights --------------------------------------------------------------------------------------
def test_windows_cover_the_image_and_the_last_is_flush_with_the_border():
    assert tile_starts(100, 32, 24) == [0, 24, 48, 68]
    assert tile_starts(32, 32, 24) == [0] and tile_starts(20, 32, 24) == [0]
    boxes = tile_boxes(70, 100, 32, 24)
    cover = np.zeros((70, 100), int)
    for y, x, h, w in boxes:
        cover[y:y + h, x:x + w] += 1
    assert cover.min() >= 1 and max(y + h for y, _, h, _ in boxes) == 70 and max(x + w for _, x, _, w in boxes) == 100
    assert Tiling(256).overlap_pixels == 64 and Tiling(256, 32).overlap_pixels == 32 and Tiling(256, 0).stride == 256
    for bad in ({"tile": 0}, {"tile": 32, "overlap": 32}, {"tile": 32, "overlap": 2.5}, {"tile": 32, "overlap": -1}):
        with pytest.raises(ConfigError):
            Tiling(**bad)


def test_neighbouring_windows_weights_add_up_to_one_and_borders_stay_at_one():
    a = blend_window(1, 32, 8, top=False, bottom=False, left=False)[0]   # a window at the image's left border
    b = blend_window(1, 32, 8, top=False, bottom=False)[0]               # its right neighbour, 24 px further
    assert float(a[0]) == 1.0 and float(a.min()) > 0 and float(b.min()) > 0
    assert torch.allclose(a[24:] + b[:8], torch.ones(8))


# --- tiled prediction -----------------------------------------------------------------------------------------
def test_tiled_prediction_equals_whole_image_prediction_where_the_tile_covers_the_image():
    seg = fewseg.Segmenter.untrained("unet", {"depth": 2, "width": 4}, image_size=16, steps=1)
    img, disk = disk_image(30, 40)
    adapted = seg.adapt([img], [disk])
    whole = adapted.predict(img, tile=None).probabilities
    for tile in (40, 64):                            # one tile holds the image: predicted whole, as without tiles
        assert np.abs(adapted.predict(img, tile=tile).probabilities - whole).max() <= 1e-5
    # a single window through the blending path gives the whole image's logits too (40x40 in a 40 px tile)
    square = disk_image(40, 40)[0]
    x = adapted.preprocessing.image(square, adapted.preprocessing.predict_mode)
    reference = adapted.preprocessing.to_original(adapted.logits(x[None]), (40, 40))
    tiled = tiled_logits(square, Tiling(40), adapted.logits, size=16)
    assert torch.allclose(tiled, reference, atol=1e-5)


def test_seams_blend_no_grid_on_a_foreground_crossing_tile_borders():
    net, (img, _) = equivariant_net(), disk_image(100, 90)
    whole = torch.sigmoid(net(torch.from_numpy(img).permute(2, 0, 1)[None]))[0, 0].numpy()  # the image in one pass

    def borders_and_steps(overlap):
        adapted = adapted_with(net, 32, (32, overlap))    # tile = network size: windows are not resized
        p = adapted.predict(img).probabilities
        t = adapted.tiling
        rows = sorted({s for s in tile_starts(100, 32, t.stride)[1:]} | {s + 32 for s in tile_starts(100, 32, t.stride)[:-1]})
        cols = sorted({s for s in tile_starts(90, 32, t.stride)[1:]} | {s + 32 for s in tile_starts(90, 32, t.stride)[:-1]})
        on_borders = max(np.abs(p - whole)[rows].max(), np.abs(p - whole)[:, cols].max())
        # a grid is a jump of the tiled map across a border line that the whole-image map does not make
        dy, dy_whole = np.diff(p, axis=0), np.diff(whole, axis=0)
        dx, dx_whole = np.diff(p, axis=1), np.diff(whole, axis=1)
        step = max(np.abs(dy - dy_whole)[[r - 1 for r in rows]].max(), np.abs(dx - dx_whole)[:, [c - 1 for c in cols]].max())
        return on_borders, step, np.abs(p - whole).max()

    on_borders, step, anywhere = borders_and_steps(16)
    assert on_borders < 0.03 and anywhere < 0.03 and step < 0.01
    hard_borders, hard_step, _ = borders_and_steps(0)  # abutting windows without blending: the test sees a grid
    assert hard_step > 5 * step and hard_step > 0.05 and hard_borders > on_borders


def test_the_network_never_sees_more_than_the_tile_batch():
    net, (img, _) = equivariant_net(), disk_image(150, 200)
    seen = []
    handle = net.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    try:
        adapted = adapted_with(net, 16, (32, 8), batch_size=3)
        pred = adapted.predict([img, img[:20, :30]])      # a large image, then one that fits in a tile
    finally:
        handle.remove()
    assert [p.probabilities.shape for p in pred] == [(150, 200), (20, 30)]
    windows = len(tile_boxes(150, 200, 32, 24))
    assert all(n <= 3 and (c, h, w) == (3, 16, 16) for n, c, h, w in seen)
    assert sum(n for n, *_ in seen) == windows + 1 and len(seen) == -(-windows // 3) + 1


# --- support patches ------------------------------------------------------------------------------------------
def test_support_tiling_keeps_the_foreground_patches_and_is_deterministic():
    seg = fewseg.Segmenter.untrained("unet", {"depth": 2, "width": 4}, image_size=16, steps=1)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    mask = np.zeros((96, 128), np.uint8)
    mask[5:20, 100:125] = 1                                            # top right: 1 of 12 patches
    mask[70:90, 40:60] = 1                                             # bottom: 1 more
    x, y, _, _, chosen = seg.prepare_support_patches([img], [mask], Tiling(32))
    fg_boxes = [b for b in tile_boxes(96, 128, 32, 32) if mask[b[0]:b[0] + b[2], b[1]:b[1] + b[3]].any()]
    assert len(fg_boxes) == 2 and all((0, b) in chosen for b in fg_boxes)
    assert len(chosen) == 4 and tuple(x.shape) == (4, 3, 16, 16) and tuple(y.shape) == (4, 1, 16, 16)
    assert int((y.flatten(1).sum(1) > 0).sum()) == 2                  # 2 foreground + 2 background patches
    again = seg.prepare_support_patches([img], [mask], Tiling(32))
    assert again[4] == chosen and torch.equal(again[0], x)
    assert len(seg.prepare_support_patches([img], [mask], Tiling(32), keep="all")[4]) == 12
    assert len(select_patches([[True] * 30 + [False] * 30], max_patches=8)) == 8
    adapted = seg.adapt([img], [mask], tile=32)
    assert adapted.info["support_patches"] == 4 and adapted.tiling == Tiling(32)
    assert adapted.predict(img).probabilities.shape == (96, 128)


# --- patch episodes ---------------------------------------------------------------------------------------------
@pytest.fixture()
def big_labelmaps(tmp_path, monkeypatch):
    """6 images of 80x100 px with three classes in blocks, so that crops of 32 px hold one class or none."""
    monkeypatch.setenv("FEWSEG_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "aerial"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("0 background\n1 road\n2 water\n3 roof\n")
    rng = np.random.default_rng(0)
    for i in range(6):
        labels = np.zeros((80, 100), np.uint8)
        for c in (1, 2, 3):
            top, left = rng.integers(0, 60), rng.integers(0, 80)
            labels[top:top + 20, left:left + 20] = c
        Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(root / "images" / f"t{i}.png")
        Image.fromarray(labels).save(root / "labels" / f"t{i}.png")
    return root


def test_patch_episodes_never_put_support_and_query_patches_of_one_image_together(big_labelmaps):
    ds = LabelMapDataset(big_labelmaps, split="all", image_size=16, patch=32, patches_per_image=3)
    assert ds.separate_sources and len(ds.items(1)) == 18 and ds.full_resolution(ds.items(1)[0], 1) is None
    sampler = EpisodeSampler(ds, shots=3, queries=3, seed=0)
    for _ in range(12):
        ep = sampler.sample()
        support, query = ep.keys[:3], ep.keys[3:]
        assert not {stem for stem, _ in support} & {stem for stem, _ in query}
        assert all(float(m.sum()) > 0 for m in ep.support_y)            # support crops hold the class
        assert tuple(ep.support_x.shape) == (3, 3, 16, 16)
    a, b = (EpisodeSampler(ds, shots=3, queries=3, seed=1).sample() for _ in range(2))
    assert a.keys == b.keys and torch.equal(a.support_x, b.support_x)  # seeded: the same crops
    # asked to mix, the same sampler does put patches of one image on both sides
    mixed = EpisodeSampler(ds, shots=3, queries=3, seed=0, separate_sources=False)
    assert any({k for k, _ in ep.keys[:3]} & {k for k, _ in ep.keys[3:]} for ep in (mixed.sample() for _ in range(12)))


def test_patch_crops_are_native_resolution_and_folder_sets_patch_too(big_labelmaps, tmp_path):
    ds = LabelMapDataset(big_labelmaps, split="all", image_size=32, patch=32, query_patches="random")
    assert ds.items(1) == sorted(ds.items(1)) and isinstance(ds.items(1)[0], str)   # one item per image: stems
    s = ds.load_patch("t0", 1, torch.Generator().manual_seed(0))
    full = np.asarray(Image.open(big_labelmaps / "labels" / "t0.png")) == 1
    mask = s.mask[0].numpy().astype(bool)
    hits = [(y, x) for y in range(80 - 31) for x in range(100 - 31) if (full[y:y + 32, x:x + 32] == mask).all()]
    assert mask.any() and hits                                                       # a crop, not a resize
    with pytest.raises(ValueError, match="patches_per_image"):
        LabelMapDataset(big_labelmaps, split="all", patches_per_image=2)
    folder = tmp_path / "folder" / "roof"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((90, 70, 3), 40 * i, np.uint8)).save(folder / f"{i}.jpg")
        m = np.zeros((90, 70), np.uint8)
        m[60:80, 10:30] = 255
        Image.fromarray(m).save(folder / f"{i}.png")
    fds = FolderDataset(tmp_path / "folder", split="all", image_size=16, patch=32, patches_per_image=2)
    s = EpisodeSampler(fds, shots=1, queries=1, seed=0).sample()
    assert float(s.support_y.sum()) > 0 and s.keys[0][0] != s.keys[1][0]


# --- the user path ----------------------------------------------------------------------------------------------
def test_cli_adapt_and_predict_with_tile_end_to_end(run, tmp_path, capsys):
    support = write_support(tmp_path / "support", n=2, size=(60, 80))
    assert main(["adapt", "--checkpoint", str(run), "--support", str(support), "--save-adapted",
                 str(tmp_path / "cls"), "--steps", "1", "--tile", "32", "--overlap", "8"]) == 0
    meta = json.loads((tmp_path / "cls" / "meta.json").read_text())
    assert meta["adaptation"]["tiling"]["tile"] == 32 and meta["adaptation"]["support_patches"] >= 2
    assert load_adapted(tmp_path / "cls").tiling == Tiling(32, 8)
    (tmp_path / "images").mkdir()
    img, _ = disk_image(70, 90)
    Image.fromarray((img * 255).astype(np.uint8)).save(tmp_path / "images" / "big.png")
    for extra, tile in (([], 32), (["--tile", "48", "--overlap", "0.5"], 48), (["--tile", "0"], None)):
        out = tmp_path / f"out{tile}"
        assert main(["predict", "--adapted", str(tmp_path / "cls"), "--images", str(tmp_path / "images"),
                     "--output", str(out), "--no-progress", *extra]) == 0
        record = json.loads((out / "results.json").read_text())
        assert (record["adaptation"]["tiling"] or {}).get("tile") == tile
        assert np.asarray(Image.open(out / "masks" / "big.png")).shape == (70, 90)
    assert fewseg.load(run, tile=32).tiling == Tiling(32) and fewseg.load(run).tiling is None
    try:                                                                 # argparse's one line, exit 2
        code = main(["predict", "--adapted", str(tmp_path / "cls"), "--images", str(tmp_path / "images"),
                     "--output", str(tmp_path / "bad"), "--overlap", "2.5"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2 and "--overlap" in capsys.readouterr().err
