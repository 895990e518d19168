"""The Flask app behind ``fewseg serve``: one page, adapt-and-segment, re-thresholding, downloads.

Routes (every failure answers JSON ``{"error": "<one line>"}``, 4xx, or 500 for a bug, never a traceback):

- ``GET /`` the page, ``GET /static/<file>`` its scripts; ``GET /api/info`` the model, the page's limits and the
  file-pairing rule (:mod:`fewseg.data.pairing`: image extensions, mask suffix) that the page applies to dropped
  files.
- ``POST /api/mask`` (``image``, ``mask``): how fewseg reads an uploaded mask, to show it over its photo.
- ``POST /api/adapt`` (multipart: ``support_image`` files; per image an optional ``support_kind``, ``mask`` or
  ``none`` (no object of the class: an empty mask, a negative example); a ``support_mask`` file per ``mask``
  image, in order; ``query`` files; optional ``threshold``) -> JSON: an ``id``, per image a photo preview, a
  probability preview and the numbers at the threshold (share of the image in the mask, mean probability inside
  the mask, highest probability).
- ``POST /api/segment/<model_id>`` (``query`` files, optional ``threshold``): more images with a kept model, no
  adaptation.
- ``GET /api/results/<id>?threshold=T``: the numbers re-cut at ``T`` (no adaptation, no prediction).
- ``GET /api/masks/<id>.zip?threshold=T``: the masks (0/255 PNG at each image's size) at ``T``.
- ``GET /api/model/<id>.zip?threshold=T``: the adapted model in ``save`` format (``fewseg_adapted/``), with ``T``
  as its threshold, for ``fewseg predict --adapted`` and ``fewseg.load_adapted``.

Nothing in a request names a file on the server: uploads are decoded in memory, names are only shown. What is
kept between requests (:mod:`fewseg.webapp.sessions`) is bounded: the last 16 adaptations and results.

Example:
    >>> import fewseg
    >>> app = create_app(fewseg.Segmenter.untrained("seed-cnn", {"width": 4}, image_size=16, steps=1))
    >>> client = app.test_client()
    >>> client.get("/api/info").get_json()["image_size"]
    16
    >>> client.post("/api/adapt", data={}).get_json()
    {'error': 'add at least one support image with its mask'}
"""
from __future__ import annotations

import math
import threading
import time
from importlib.resources import files

import numpy as np

from fewseg.data.io import IMAGE_EXTS
from fewseg.data.pairing import MASK_SUFFIX
from fewseg.errors import FewsegError
from fewseg.inputs import as_image, as_mask
from fewseg.webapp import sessions
from fewseg.webapp.sessions import Item, Result, Store, data_url, png
from fewseg.webapp.uploads import Limits, UploadError, display_name, read_upload

STATIC = ("app.js", "pairing.js")  # served under /static/
KINDS = ("mask", "none")           # support_kind: a mask file follows, or no object of the class (empty mask)


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        stem = n.rsplit(".", 1)[0]
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return out


def _threshold(values, default: float | None = None) -> float | None:
    """``values["threshold"]`` (a form or query string; ``default`` when absent or empty), else an UploadError:
    a number strictly between 0 and 1."""
    text = values.get("threshold", "")
    if text is None or not str(text).strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 1.0:  # also NaN
        raise UploadError(f"threshold must be a number strictly between 0 and 1, got {str(text)[:40]!r}")
    return value


def _support_kinds(form, n_images: int) -> list[str]:
    """Per support image, ``mask`` (a mask file follows) or ``none`` (an empty mask); all ``mask`` when absent."""
    kinds = form.getlist("support_kind")
    if not kinds:
        return ["mask"] * n_images
    if len(kinds) != n_images:
        raise UploadError(f"{n_images} support images but {len(kinds)} support_kind values: give one per image")
    for k in kinds:
        if k not in KINDS:
            raise UploadError(f"support_kind must be 'mask' or 'none' (no object of the class), got {k[:40]!r}")
    return kinds


def _check_counts(sup_images: list, sup_masks: list, kinds: list[str], queries: list, limits: Limits) -> None:
    """The numbers of support images, masks and images to segment of one request, else an UploadError."""
    if not sup_images:
        raise UploadError("add at least one support image with its mask")
    wanted = kinds.count("mask")
    if len(sup_masks) != wanted:
        extra = f" ({len(kinds) - wanted} marked as none of the class)" if wanted < len(kinds) else ""
        raise UploadError(f"{len(sup_images)} support images{extra} but {len(sup_masks)} masks: give every support "
                          "image a mask (upload one or draw on the image) or mark it as none of the class")
    if len(sup_images) > limits.support:
        raise UploadError(f"{len(sup_images)} support images; the page takes 1-{limits.support}")
    _check_queries(queries, limits)


def _check_queries(queries: list, limits: Limits) -> None:
    if not queries:
        raise UploadError("add at least one image to segment")
    if len(queries) > limits.queries:
        raise UploadError(f"{len(queries)} images to segment; the limit is {limits.queries} per request")


def _read_mask(image: np.ndarray, upload, name: str, limits: Limits) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, void) of the uploaded mask of ``image``, checked against the image's size."""
    fg, ign = as_mask(read_upload(upload.read(), f"mask of {name}", "mask", limits), f"mask of {name}")
    if fg.shape != image.shape[:2]:
        raise UploadError(f"the mask of {name} is {fg.shape[1]}x{fg.shape[0]} but {name} is "
                          f"{image.shape[1]}x{image.shape[0]}: masks must match their image")
    return fg, ign


def _read_support(sup_images: list, sup_masks: list, kinds: list[str], limits: Limits) -> tuple[list, list]:
    """Decoded support images and their masks (0/1, 255 = void); an empty mask is a negative example, and at
    least one image must show the object."""
    images, masks, uploads = [], [], iter(sup_masks)
    for i, (fi, kind) in enumerate(zip(sup_images, kinds)):
        name = display_name(fi.filename, f"support_{i + 1}")
        images.append(as_image(read_upload(fi.read(), name, "image", limits), name))
        if kind == "none":
            masks.append(np.zeros(images[-1].shape[:2], np.uint8))
            continue
        fg, ign = _read_mask(images[-1], next(uploads), name, limits)
        masks.append(np.where(ign, 255, fg).astype(np.uint8))  # 0/1, 255 = void
    if not any((m == 1).any() for m in masks):
        raise UploadError("mark the object in at least one support image (images marked as none of the class, "
                          "or with an empty mask, only show what the class is not)")
    return images, masks


def _segment(adapted, queries: list, threshold: float, limits: Limits) -> tuple[list[dict], list[Item]]:
    """(results shown in the page, kept probabilities) of the images to segment, one photo decoded at a time."""
    names = [display_name(f.filename, f"image_{j + 1}") for j, f in enumerate(queries)]
    out, items = [], []
    for f, name, stem in zip(queries, names, _unique(names)):
        img = as_image(read_upload(f.read(), name, "image", limits), name)
        pred = adapted.predict(img, threshold=threshold)
        q = sessions.quantize(pred.probabilities)
        items.append(Item(name, stem, q))
        out.append({"name": name, "width": int(img.shape[1]), "height": int(img.shape[0]),
                    **sessions.stats(q, threshold), "image": sessions.photo_preview(img),
                    "probabilities": sessions.probability_preview(pred.probabilities)})
        del img, pred
    return out, items


class App:
    """The state behind the routes: the segmenter, the limits, kept models and results."""

    def __init__(self, segmenter, limits: Limits | None = None, keep: int = sessions.KEEP,
                 budget: int = sessions.BUDGET_BYTES):
        self.segmenter, self.limits = segmenter, limits or Limits()
        self.models = Store(keep)
        self.results = Store(keep, budget, size=lambda r: r.nbytes)
        self.model_lock = threading.Lock()  # one adaptation at a time (the meta-learner is shared)

    def answer(self, key: str, result: Result, adapted, out: list[dict], seconds: float) -> dict:
        t = result.threshold
        return {"id": key, "model_id": result.model_id, "seconds": round(seconds, 3), "threshold": t,
                "shots": adapted.info.get("shots"), "negatives": adapted.info.get("negatives", 0),
                "steps": adapted.info.get("steps"), "zip": f"/api/masks/{key}.zip?threshold={t}",
                "model": f"/api/model/{key}.zip?threshold={t}", "results": out}

    def adapt(self, request) -> dict:
        """``POST /api/adapt``: check the whole request (counts, kinds, threshold) before any work, adapt, segment."""
        sup_images, sup_masks = request.files.getlist("support_image"), request.files.getlist("support_mask")
        queries = request.files.getlist("query")
        kinds = _support_kinds(request.form, len(sup_images))
        _check_counts(sup_images, sup_masks, kinds, queries, self.limits)
        threshold = _threshold(request.form, self.segmenter.threshold)
        images, masks = _read_support(sup_images, sup_masks, kinds, self.limits)
        negatives = sum(not (m == 1).any() for m in masks)
        t0 = time.perf_counter()
        with self.model_lock:
            adapted = self.segmenter.adapt(images, masks)
        adapted.info.setdefault("negatives", negatives)
        del images, masks
        out, items = _segment(adapted, queries, threshold, self.limits)
        model_id = self.models.add(adapted)
        result = Result(model_id, threshold, items)
        key = self.results.add(result, model_id)
        return self.answer(key, result, adapted, out, time.perf_counter() - t0)

    def segment(self, model_id: str, request) -> dict | None:
        """``POST /api/segment/<model_id>``: the images with a kept adapted model (None: it is gone)."""
        adapted = self.models.get(model_id)
        if adapted is None:
            return None
        queries = request.files.getlist("query")
        _check_queries(queries, self.limits)
        threshold = _threshold(request.form, adapted.threshold)
        t0 = time.perf_counter()
        out, items = _segment(adapted, queries, threshold, self.limits)
        result = Result(model_id, threshold, items)
        key = self.results.add(result)
        return self.answer(key, result, adapted, out, time.perf_counter() - t0)

    def mask(self, request) -> dict:
        """``POST /api/mask``: the uploaded mask as fewseg reads it (255 object, 128 void, 0 background), at the
        image's size, with its shares, so that the page shows it over its photo."""
        fi, fm = request.files.get("image"), request.files.get("mask")
        if fi is None or fm is None:
            raise UploadError("send an image and its mask")
        name = display_name(fi.filename, "image")
        image = as_image(read_upload(fi.read(), name, "image", self.limits), name)
        fg, ign = _read_mask(image, fm, name, self.limits)
        shown = np.where(ign, 128, np.where(fg, 255, 0)).astype(np.uint8)
        return {"name": name, "width": int(image.shape[1]), "height": int(image.shape[0]),
                "foreground_fraction": round(float(fg.mean()), 4), "void_fraction": round(float(ign.mean()), 4),
                "mask": data_url(png(shown))}


def model_info(segmenter, limits: Limits) -> dict:
    """``GET /api/info``: the model, the page's limits and the file-pairing rule."""
    p = segmenter.preprocessing
    tiling = segmenter.tiling
    return {"checkpoint": segmenter.source, "algorithm": segmenter.algorithm.name,
            "image_size": p.image_size, "resize": p.resize, "channels": p.channels,
            "steps": segmenter.default_steps, "adaptation": segmenter.describe_adaptation(),
            "threshold": segmenter.threshold, "tiling": None if tiling is None else tiling.to_dict(),
            "max_support": limits.support, "max_queries": limits.queries,
            "max_file_mb": limits.file_bytes // 2**20, "max_request_mb": limits.request_bytes // 2**20,
            "pairing": {"image_extensions": list(IMAGE_EXTS), "mask_suffix": MASK_SUFFIX}}


def create_app(segmenter, limits: Limits | None = None, keep: int = sessions.KEEP,
               budget: int = sessions.BUDGET_BYTES):
    """The Flask app serving ``segmenter`` (a :class:`~fewseg.segmenter.Segmenter`), uploads checked against
    ``limits`` (default :class:`~fewseg.webapp.uploads.Limits`); ``keep`` adaptations and results kept, their
    probabilities within ``budget`` bytes."""
    from flask import Flask, Response, jsonify, request
    from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

    state = App(segmenter, limits, keep, budget)
    limits = state.limits
    app = Flask("fewseg.webapp", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = limits.request_bytes
    app.extensions["fewseg"] = state
    static = files("fewseg.webapp") / "static"
    page = (static / "index.html").read_text(encoding="utf-8")
    scripts = {name: (static / name).read_text(encoding="utf-8") for name in STATIC}
    gone = "these results are gone (the server keeps the last 16): press Adapt again"

    def fail(message: str, status: int = 400):
        return jsonify({"error": message}), status

    def result_or_none(key: str):
        return state.results.get(key)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc):
        return fail(f"upload too large: the limit is {limits.request_bytes / 2**20:.0f} MB per request", 413)

    @app.errorhandler(HTTPException)
    def http_error(exc):
        return fail(exc.description.splitlines()[0] if exc.description else exc.name, exc.code or 400)

    @app.errorhandler(FewsegError)
    def user_error(exc):
        return fail(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)

    @app.errorhandler(Exception)
    def internal(exc):  # a bug: one line, never a traceback
        text = str(exc).strip().splitlines()
        return fail(f"internal error ({type(exc).__name__}{': ' + text[0][:200] if text else ''})", 500)

    @app.get("/")
    def index():
        return Response(page, mimetype="text/html")

    @app.get("/static/<name>")
    def script(name: str):
        if name not in scripts:
            return fail(f"no such file: {name[:80]}", 404)
        return Response(scripts[name], mimetype="text/javascript")

    @app.get("/api/info")
    def info():
        return jsonify(model_info(segmenter, limits))

    @app.post("/api/mask")
    def mask():
        return jsonify(state.mask(request))

    @app.post("/api/adapt")
    def adapt():
        return jsonify(state.adapt(request))

    @app.post("/api/segment/<model_id>")
    def segment(model_id: str):
        body = state.segment(model_id, request)
        return fail("this adapted model is gone (the server keeps the last 16): press Adapt again", 404) \
            if body is None else jsonify(body)

    @app.get("/api/results/<key>")
    def rethreshold(key: str):
        result = result_or_none(key)
        if result is None:
            return fail(gone, 404)
        t = _threshold(request.args, result.threshold)
        return jsonify({"id": key, "threshold": t, "zip": f"/api/masks/{key}.zip?threshold={t}",
                        "model": f"/api/model/{key}.zip?threshold={t}", "results": result.stats(t)})

    @app.get("/api/masks/<key>.zip")
    def download(key: str):
        result = result_or_none(key)
        if result is None:
            return fail(gone, 404)
        data = result.masks_zip(_threshold(request.args, result.threshold))
        return Response(data, mimetype="application/zip",
                        headers={"Content-Disposition": "attachment; filename=fewseg_masks.zip"})

    @app.get("/api/model/<key>.zip")
    def download_model(key: str):
        result = result_or_none(key)
        adapted = None if result is None else state.models.get(result.model_id)
        if adapted is None:
            return fail(gone, 404)
        data = sessions.model_zip(adapted, _threshold(request.args, result.threshold))
        return Response(data, mimetype="application/zip",
                        headers={"Content-Disposition": f"attachment; filename={sessions.MODEL_FOLDER}.zip"})

    return app


def make_server(segmenter, host: str = "127.0.0.1", port: int = 7860, limits: Limits | None = None):
    """A threaded WSGI server for the app (``.serve_forever()``, ``.shutdown()``, ``.server_port``)."""
    from werkzeug.serving import make_server as werkzeug_server
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise FewsegError(f"cannot listen on port {port!r}: a port is 0-65535 (0: any free port)")
    try:
        return werkzeug_server(host, port, create_app(segmenter, limits), threaded=True)
    except OSError as exc:
        raise FewsegError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def serve(checkpoint, host: str = "127.0.0.1", port: int = 7860, device: str = "cpu", log=print,
          tile: int | None = None, overlap: float | None = None) -> None:
    """``fewseg serve``: load ``checkpoint``, serve the page until Ctrl-C (KeyboardInterrupt). ``tile`` (pixels;
    None or 0: none) and ``overlap``: large images adapted on patches and segmented window by window
    (:mod:`fewseg.tiling`)."""
    try:
        import flask  # noqa: F401
    except ImportError:
        raise FewsegError('fewseg serve needs Flask: pip install "fewseg[serve]"') from None
    if overlap is not None and not tile:
        raise FewsegError("--overlap needs --tile PIXELS (the windows it overlaps)")
    from fewseg.segmenter import load
    from fewseg.tiling import tile_options
    server = make_server(load(checkpoint, device, **tile_options(tile, overlap)), host, port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log(f"fewseg: warning: listening on {host}: anyone who can reach this machine can use the page "
            "(there is no login)")
    shown = f"[{host}]" if ":" in host else host
    log(f"fewseg serve: http://{shown}:{server.server_port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()  # werkzeug's returns quietly on Ctrl-C ...
    finally:
        server.server_close()
    raise KeyboardInterrupt     # ... so that fewseg exits 130, as after any Ctrl-C
