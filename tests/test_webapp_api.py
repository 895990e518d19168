"""fewseg serve's routes through Flask's test client: honest numbers, re-thresholding without adapting again,
the adapted model downloaded in ``save`` format (read back by ``fewseg.load_adapted`` and ``fewseg predict
--adapted``), negative support images, more images with a kept model, an uploaded mask read as adaptation reads
it, bounded memory, tiling (``fewseg serve --tile``), and the page's file-pairing rule (``static/pairing.js``)
against the CLI's (:func:`fewseg.data.pairing.pair_images`). The page itself in Chromium: tests/test_serve.py."""
from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from userpath import labelled

pytest.importorskip("flask", reason="fewseg serve needs Flask: pip install 'fewseg[serve]'")
import fewseg
from fewseg.cli import main
from fewseg.data.io import IMAGE_EXTS
from fewseg.data.pairing import MASK_SUFFIX, pair_images
from fewseg.webapp import server as server_module
from fewseg.webapp.server import create_app
from fewseg.webapp.sessions import SCALE, quantize, stats

PAIRING_NAMES = ["cat.jpg", "cat.png", "dog.png", "dog_mask.png", "eel.jpg", ".hidden.png", "notes.txt", "A.JPG",
                 "A.png", "b.PNG", "b_mask.PNG", "x_mask.png", "y.tif", "y_mask.png", "y.png", "z.png", "z.jpg",
                 "z.jpeg", "multi.dot.name.jpg", "multi.dot.name.png", "Cat.webp", "a..png", "noext", "UP.JPEG",
                 "UP_mask.png", "émile.bmp", "émile.png", "_mask.png", "q.tiff", "q.jpg", "w.", "v.Jpg", "v.PNG"]
PAIRING_JS = Path(server_module.__file__).parent / "static" / "pairing.js"


def cli_pairs(folder: Path, names: list[str]) -> list[list]:
    """``pair_images`` of a folder holding (empty) files of these names: [[image, mask or None]] by name."""
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(b"")
    return [[image.name, mask.name if mask else None] for image, mask in pair_images(folder)]


def png(array, fmt="PNG") -> io.BytesIO:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    buf.seek(0)
    return buf


def form(n_support=2, n_query=2, seed=0, kinds=None, threshold=None) -> dict:
    """A multipart form: support photos with 0/255 masks (``kinds``: per image "mask" or "none"), queries."""
    rng = np.random.default_rng(seed)
    kinds = kinds or ["mask"] * n_support
    data = {"support_image": [], "support_mask": [], "query": []}
    for i, kind in enumerate(kinds):
        img, mask = labelled(rng, 30 + i, 40)
        data["support_image"].append((png(img, "JPEG"), f"s{i}.jpg"))
        if kind == "mask":
            data["support_mask"].append((png(mask), f"s{i}.png"))
    if kinds != ["mask"] * len(kinds):
        data["support_kind"] = kinds
    for j in range(n_query):
        img, _ = labelled(rng, 25 + 5 * j, 33)
        data["query"].append((png(img), f"q{j}.png"))
    if threshold is not None:
        data["threshold"] = str(threshold)
    return data


def queries(n=2, seed=0) -> list[np.ndarray]:
    """The query photos ``form`` sends (same generator, same order)."""
    rng = np.random.default_rng(seed)
    for i in range(2):
        labelled(rng, 30 + i, 40)
    return [labelled(rng, 25 + 5 * j, 33)[0] for j in range(n)]


def post(client, url, data):
    return client.post(url, data=data, content_type="multipart/form-data")


@pytest.fixture
def counted(seg, monkeypatch):
    """(test client, list growing by one per adaptation)."""
    calls, original = [], seg.adapt
    monkeypatch.setattr(seg, "adapt", lambda *a, **k: calls.append(1) or original(*a, **k))
    return create_app(seg).test_client(), calls


def adapted_of(client, key: str, tmp_path: Path, threshold=None) -> tuple[fewseg.AdaptedSegmenter, Path]:
    """The model download of result ``key`` unzipped in ``tmp_path``, loaded with ``fewseg.load_adapted``."""
    url = f"/api/model/{key}.zip" + (f"?threshold={threshold}" if threshold is not None else "")
    r = client.get(url)
    assert r.status_code == 200 and r.mimetype == "application/zip", r.data[:200]
    assert "fewseg_adapted.zip" in r.headers["Content-Disposition"]
    with zipfile.ZipFile(io.BytesIO(r.data)) as archive:
        assert all(n.startswith("fewseg_adapted/") for n in archive.namelist())
        archive.extractall(tmp_path)
    return fewseg.load_adapted(tmp_path / "fewseg_adapted"), tmp_path / "fewseg_adapted"


def agrees(mask: np.ndarray, probabilities: np.ndarray, threshold: float) -> bool:
    """A mask cut from the kept probabilities equals ``p > threshold`` except within 1/65535 of the threshold."""
    near = np.abs(probabilities - threshold) <= 1.0 / SCALE
    return bool((mask == (probabilities > threshold))[~near].all())


# --- the numbers ----------------------------------------------------------------------------------------------
def test_the_numbers_are_defined_at_the_threshold():
    p = np.array([[0.2, 0.4], [0.45, 0.3]], np.float32)       # nothing above 0.5
    assert stats(quantize(p), 0.5) == {"foreground_fraction": 0.0, "mask_mean_probability": None,
                                       "max_probability": 0.45}
    assert stats(quantize(p), 0.35) == {"foreground_fraction": 0.5, "mask_mean_probability": 0.425,
                                        "max_probability": 0.45}


def test_adapt_answers_what_its_numbers_mean_and_the_downloaded_model_gives_them(seg, tmp_path):
    client = create_app(seg).test_client()
    body = post(client, "/api/adapt", form(threshold=0.4)).get_json()
    assert body["threshold"] == 0.4 and body["shots"] == 2 and body["negatives"] == 0
    adapted, _ = adapted_of(client, body["id"], tmp_path)
    assert adapted.threshold == 0.4                              # the threshold of the request
    for r, photo in zip(body["results"], queries()):
        assert set(r) == {"name", "width", "height", "foreground_fraction", "mask_mean_probability",
                          "max_probability", "image", "probabilities"}
        pred = adapted.predict(photo)
        p = pred.probabilities
        assert r["foreground_fraction"] == pytest.approx(pred.mask.mean(), abs=1e-4)
        assert r["max_probability"] == pytest.approx(p.max(), abs=1e-4)
        if pred.mask.any():
            assert r["mask_mean_probability"] == pytest.approx(p[pred.mask].mean(), abs=1e-4)
        shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(r["probabilities"].split(",", 1)[1]))))
        assert shown.shape == p.shape and np.abs(shown / 255.0 - p).max() <= 0.5 / 255 + 1e-6


# --- re-thresholding --------------------------------------------------------------------------------------------
def test_results_and_masks_are_recut_at_any_threshold_without_adapting_again(counted, tmp_path):
    client, calls = counted
    body = post(client, "/api/adapt", form()).get_json()
    key = body["id"]
    assert len(calls) == 1 and body["threshold"] == 0.5
    adapted, _ = adapted_of(client, key, tmp_path)
    probabilities = [adapted.predict(q).probabilities for q in queries()]
    shares = []
    for t in (0.05, 0.3, 0.5, 0.7, 0.95):
        r = client.get(f"/api/results/{key}?threshold={t}").get_json()
        assert r["threshold"] == t and r["zip"] == f"/api/masks/{key}.zip?threshold={t}"
        assert r["model"] == f"/api/model/{key}.zip?threshold={t}"
        shares.append([x["foreground_fraction"] for x in r["results"]])
        with zipfile.ZipFile(io.BytesIO(client.get(r["zip"]).data)) as archive:
            masks = [np.asarray(Image.open(io.BytesIO(archive.read(f"masks/q{j}.png")))) > 0 for j in range(2)]
        for mask, p, x in zip(masks, probabilities, r["results"]):
            assert agrees(mask, p, t) and x["foreground_fraction"] == pytest.approx(mask.mean(), abs=1e-4)
            assert (x["mask_mean_probability"] is None) == (not mask.any())
    assert all(a >= b for a, b in zip(np.array(shares)[:-1].ravel(), np.array(shares)[1:].ravel()))  # falls with t
    assert len(calls) == 1                                                                     # never re-adapted
    assert client.get(f"/api/results/{key}").get_json()["threshold"] == 0.5                   # default: the request's
    for bad in ("abc", "0", "1", "nan", "-0.2"):
        r = client.get(f"/api/results/{key}?threshold={bad}")
        assert r.status_code == 400 and "strictly between 0 and 1" in r.get_json()["error"]
        assert client.get(f"/api/masks/{key}.zip?threshold={bad}").status_code == 400
        assert client.get(f"/api/model/{key}.zip?threshold={bad}").status_code == 400
    for url in ("/api/results/nosuch", "/api/masks/nosuch.zip", "/api/model/nosuch.zip"):
        r = client.get(url)
        assert r.status_code == 404 and "press Adapt again" in r.get_json()["error"]


# --- the model download ---------------------------------------------------------------------------------------
def test_the_downloaded_model_is_the_save_format_that_fewseg_predict_reads(seg, tmp_path, capsys):
    client = create_app(seg).test_client()
    body = post(client, "/api/adapt", form()).get_json()
    adapted, folder = adapted_of(client, body["id"], tmp_path / "dl", threshold=0.3)
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "weights.safetensors"]
    assert adapted.threshold == 0.3 and adapted.info["shots"] == 2
    assert json.loads((folder / "meta.json").read_text())["kind"] == "adapted"
    photos = tmp_path / "photos"
    photos.mkdir()
    for j, q in enumerate(queries()):
        Image.fromarray(q).save(photos / f"q{j}.png")
    assert main(["predict", "--adapted", str(folder), "--images", str(photos), "--output", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    with zipfile.ZipFile(io.BytesIO(client.get(f"/api/masks/{body['id']}.zip?threshold=0.3").data)) as archive:
        for j in range(2):
            served = np.asarray(Image.open(io.BytesIO(archive.read(f"masks/q{j}.png"))))
            written = np.asarray(Image.open(tmp_path / "out" / "masks" / f"q{j}.png"))
            p = adapted.predict(photos / f"q{j}.png").probabilities
            assert agrees(served > 0, p, 0.3) and agrees(written > 0, p, 0.3)


# --- negative examples ----------------------------------------------------------------------------------------
def test_support_images_marked_none_of_the_class_are_negative_examples(counted):
    client, calls = counted
    r = post(client, "/api/adapt", form(kinds=["mask", "none", "mask"]))
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["shots"] == 3 and r.get_json()["negatives"] == 1
    empty = form()                                        # an uploaded empty mask is a negative too
    empty["support_mask"][1] = (png(np.zeros((31, 40), np.uint8)), "s1.png")
    r = post(client, "/api/adapt", empty)
    assert r.status_code == 200 and r.get_json()["negatives"] == 1, r.get_json()
    assert len(calls) == 2

    def refused(data, status=400) -> str:
        r = post(client, "/api/adapt", data)
        assert r.status_code == status and set(r.get_json()) == {"error"}
        return r.get_json()["error"]

    assert refused(form(kinds=["none", "none"])).startswith("mark the object in at least one support image")
    data = form(kinds=["mask", "none"])
    data["support_mask"].append((png(np.zeros((31, 40), np.uint8)), "s1.png"))
    assert "2 support images (1 marked as none of the class) but 2 masks" in refused(data)
    data = form(kinds=["mask", "none"])
    data["support_kind"] = ["mask"]
    assert "2 support images but 1 support_kind values" in refused(data)
    data = form(kinds=["mask", "none"])
    data["support_kind"] = ["mask", "nothing"]
    assert "support_kind must be 'mask' or 'none'" in refused(data)
    assert len(calls) == 2                                # refused before any adaptation


# --- more images with a kept model ----------------------------------------------------------------------------
def test_segment_uses_the_kept_model_without_adapting(counted):
    client, calls = counted
    first = post(client, "/api/adapt", form(n_query=1)).get_json()
    more = form(n_query=2, threshold=0.45)
    r = post(client, f"/api/segment/{first['model_id']}", {"query": more["query"], "threshold": "0.45"})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert len(calls) == 1 and body["id"] != first["id"] and body["model_id"] == first["model_id"]
    assert [x["name"] for x in body["results"]] == ["q0.png", "q1.png"] and body["threshold"] == 0.45
    with zipfile.ZipFile(io.BytesIO(client.get(body["zip"]).data)) as archive:
        assert archive.namelist() == ["masks/q0.png", "masks/q1.png"]
    r = post(client, f"/api/segment/{first['model_id']}", {"query": []})
    assert r.status_code == 400 and "at least one image to segment" in r.get_json()["error"]
    r = post(client, "/api/segment/nosuch", {"query": form(n_query=1)["query"]})
    assert r.status_code == 404 and "press Adapt again" in r.get_json()["error"]


# --- an uploaded mask, read as adaptation reads it ------------------------------------------------------------
def test_the_mask_route_shows_the_mask_as_fewseg_reads_it(seg):
    client = create_app(seg).test_client()
    img, mask = labelled(np.random.default_rng(0), 30, 40)
    palette = Image.fromarray(np.where(mask > 0, 1, 0).astype(np.uint8), "P")
    labels = np.asarray(palette).copy()
    labels[:3] = 255                                           # void rows
    palette = Image.fromarray(labels, "P")
    palette.putpalette([0, 0, 0, 200, 0, 0] + [0, 0, 0] * 253 + [255, 255, 255])
    buf = io.BytesIO()
    palette.save(buf, "PNG")
    buf.seek(0)
    r = post(client, "/api/mask", {"image": (png(img), "a.jpg"), "mask": (buf, "a.png")})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert (body["width"], body["height"]) == (40, 30) and body["void_fraction"] == pytest.approx(0.1)
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask"].split(",", 1)[1]))))
    assert set(np.unique(shown)) == {0, 128, 255} and (shown[:3] == 128).all()
    assert body["foreground_fraction"] == pytest.approx((shown == 255).mean(), abs=1e-4)
    r = post(client, "/api/mask", {"image": (png(img), "a.jpg"), "mask": (png(mask[:10]), "a.png")})
    assert r.status_code == 400 and "the mask of a.jpg is 40x10 but a.jpg is 40x30" in r.get_json()["error"]
    r = post(client, "/api/mask", {"image": (png(img), "a.jpg")})
    assert r.status_code == 400 and r.get_json()["error"] == "send an image and its mask"
    r = post(client, "/api/mask", {"image": (png(img), "a.jpg"), "mask": (io.BytesIO(b"nope"), "a.png")})
    assert r.status_code == 400 and "mask of a.jpg is not an image" in r.get_json()["error"]


# --- bounded memory -------------------------------------------------------------------------------------------
def test_kept_results_are_bounded_by_count_and_bytes(seg):
    client = create_app(seg, keep=2).test_client()
    keys = [post(client, "/api/adapt", form(n_support=1, n_query=1, seed=i)).get_json()["id"] for i in range(3)]
    assert client.get(f"/api/results/{keys[0]}").status_code == 404
    assert all(client.get(f"/api/results/{k}").status_code == 200 for k in keys[1:])
    models = client.application.extensions["fewseg"].models
    more = [post(client, f"/api/segment/{keys[2]}", {"query": form(n_query=1)["query"]}).get_json()["id"]
            for _ in range(3)]                                   # results of one model: the models kept stay 2
    assert len(models) == 2 and client.get(f"/api/results/{keys[1]}").status_code == 404
    assert client.get(f"/api/model/{more[-1]}.zip").status_code == 200
    assert post(client, f"/api/segment/{keys[0]}", {"query": form(n_query=1)["query"]}).status_code == 404
    models.items.pop(keys[2])                                    # a result outliving its model
    assert client.get(f"/api/results/{more[-1]}").status_code == 200
    r = client.get(f"/api/model/{more[-1]}.zip")
    assert r.status_code == 404 and "press Adapt again" in r.get_json()["error"]
    tight = create_app(seg, budget=1).test_client()            # each result alone exceeds it: the newest stays
    keys = [post(tight, "/api/adapt", form(n_support=1, n_query=1, seed=i)).get_json()["id"] for i in range(2)]
    assert tight.get(f"/api/results/{keys[0]}").status_code == 404
    assert tight.get(f"/api/results/{keys[1]}").status_code == 200
    assert len(tight.application.extensions["fewseg"].results) == 1


# --- the page's scripts and the pairing rule ------------------------------------------------------------------
def test_info_names_the_pairing_rule_and_the_scripts_are_served(seg):
    client = create_app(seg).test_client()
    info = client.get("/api/info").get_json()
    assert info["pairing"] == {"image_extensions": list(IMAGE_EXTS), "mask_suffix": MASK_SUFFIX}
    assert info["tiling"] is None
    page = client.get("/").get_data(as_text=True)
    for name in ("pairing.js", "app.js"):
        assert f'src="/static/{name}"' in page
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and r.mimetype == "text/javascript"
    assert client.get("/static/../server.py").status_code == 404
    assert client.get("/static/index.html").status_code == 404


def test_the_pairing_script_agrees_with_the_cli_in_node(tmp_path):
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node is not installed (the same check runs in Chromium: tests/test_serve.py)")
    script = ("const p = require(process.argv[1]); const names = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
              "process.stdout.write(JSON.stringify(p.pairNames(names, JSON.parse(process.argv[2]))));")
    options = json.dumps({"imageExtensions": list(IMAGE_EXTS), "maskSuffix": MASK_SUFFIX})
    out = subprocess.run([node, "-e", script, str(PAIRING_JS), options], input=json.dumps(PAIRING_NAMES),
                         capture_output=True, text=True, timeout=60, check=True)
    answer = json.loads(out.stdout)
    assert answer["pairs"] == cli_pairs(tmp_path / "folder", PAIRING_NAMES)
    unused = {u["name"]: u["why"] for u in answer["unused"]}
    assert unused["notes.txt"].startswith("not an image file") and unused[".hidden.png"] == "a hidden file"
    assert unused["x_mask.png"] == "a mask with no image x.* among the files"
    assert unused["z.jpg"] == "another file is the image of z"


# --- large images: fewseg serve --tile ------------------------------------------------------------------------
def test_serve_passes_tile_and_overlap_to_the_segmenter(run, monkeypatch, capsys):
    seen = {}

    def stop(segmenter, *a, **k):
        seen["tiling"] = segmenter.tiling
        raise fewseg.errors.FewsegError("stopped before listening")

    monkeypatch.setattr(server_module, "make_server", stop)
    assert main(["serve", "--checkpoint", str(run), "--tile", "32", "--overlap", "8"]) == 2
    assert (seen["tiling"].tile, seen["tiling"].overlap_pixels) == (32, 8)
    assert main(["serve", "--checkpoint", str(run), "--overlap", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "--overlap needs --tile" in err and err.count("stopped before listening") == 1


def test_a_tiled_server_adapts_on_patches_and_the_model_keeps_its_tiling(run, tmp_path):
    seg = fewseg.load(run, tile=32, overlap=8)
    client = create_app(seg).test_client()
    assert client.get("/api/info").get_json()["tiling"] == {"tile": 32, "overlap": 8, "overlap_pixels": 8}
    rng = np.random.default_rng(3)
    img, mask = labelled(rng, 70, 90)
    big, _ = labelled(rng, 80, 100)
    data = {"support_image": [(png(img), "s.png")], "support_mask": [(png(mask), "s_mask.png")],
            "query": [(png(big), "big.png")]}
    body = post(client, "/api/adapt", data).get_json()
    assert "error" not in body, body
    (r,) = body["results"]
    assert (r["width"], r["height"]) == (100, 80)
    adapted, _ = adapted_of(client, body["id"], tmp_path)
    assert adapted.tiling is not None and adapted.tiling.tile == 32 and adapted.info["support_patches"] > 1
    assert r["foreground_fraction"] == pytest.approx(adapted.predict(big).mask.mean(), abs=1e-4)
