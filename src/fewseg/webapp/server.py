"""The Flask app behind ``fewseg serve``: one page, one adapt-and-segment call, one zip download.

Routes: ``GET /`` the page; ``GET /api/info`` the model; ``POST /api/adapt`` (multipart: ``support_image`` and
``support_mask`` files in pairs, in order, and ``query`` files; a drawn mask arrives as a PNG like any other)
-> JSON with overlays as data URLs and an id; ``GET /api/masks/<id>.zip`` the masks (0/255 PNG at each
image's size). Every failure answers JSON ``{"error": "<one line>"}`` (4xx, or 500 for a bug), never a
traceback. Nothing in a request names a file on the server: uploads are decoded in memory, names are only
shown. Results live in memory (the last 16 adaptations).

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

import base64
import io
import math
import secrets
import threading
import time
import zipfile
from collections import OrderedDict
from importlib.resources import files

import numpy as np
from PIL import Image

from fewseg.engine.folders import overlay
from fewseg.errors import FewsegError
from fewseg.inputs import as_image, as_mask
from fewseg.webapp.uploads import Limits, UploadError, display_name, read_upload

KEEP_RESULTS = 16
PREVIEW_SIDE = 1024  # overlays shown in the page; the masks in the zip keep each image's size


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def _preview(image: np.ndarray, mask: np.ndarray, side: int = PREVIEW_SIDE) -> np.ndarray:
    """The overlay to show in the page, at most ``side`` pixels on its longer side (the zip keeps full size)."""
    shown = Image.fromarray(overlay(image, mask))
    if max(shown.size) > side:
        scale = side / max(shown.size)
        shown = shown.resize((max(1, round(shown.width * scale)), max(1, round(shown.height * scale))),
                             Image.BILINEAR)
    return np.asarray(shown)


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        stem = n.rsplit(".", 1)[0]
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return out


class Results:
    """The last ``keep`` adaptations' masks: id -> [(name, png bytes)] (bounded, thread-safe)."""

    def __init__(self, keep: int = KEEP_RESULTS):
        self.keep, self.items, self.lock = keep, OrderedDict(), threading.Lock()

    def add(self, masks: list[tuple[str, bytes]]) -> str:
        key = secrets.token_urlsafe(12)
        with self.lock:
            self.items[key] = masks
            while len(self.items) > self.keep:
                self.items.popitem(last=False)
        return key

    def get(self, key: str):
        with self.lock:
            return self.items.get(key)


def _threshold(form) -> float | None:
    """The form's ``threshold`` (None when absent or empty), else an UploadError: a number in (0, 1)."""
    text = form.get("threshold", "")
    if text is None or not str(text).strip():
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 1.0:  # also NaN
        raise UploadError(f"threshold must be a number strictly between 0 and 1, got {str(text)[:40]!r}")
    return value


def _check_counts(sup_images: list, sup_masks: list, queries: list, limits: Limits) -> None:
    """The numbers of support images, masks and images to segment of one request, else an UploadError."""
    if not sup_images:
        raise UploadError("add at least one support image with its mask")
    if len(sup_masks) != len(sup_images):
        raise UploadError(f"{len(sup_images)} support images but {len(sup_masks)} masks: give every support image a "
                          "mask (upload one or draw on the image)")
    if len(sup_images) > limits.support:
        raise UploadError(f"{len(sup_images)} support images; the page takes 1-{limits.support}")
    if not queries:
        raise UploadError("add at least one image to segment")
    if len(queries) > limits.queries:
        raise UploadError(f"{len(queries)} images to segment; the limit is {limits.queries} per request")


def _read_support(sup_images: list, sup_masks: list, limits: Limits) -> tuple[list, list]:
    """Decoded support images and their masks (0/1, 255 = void), checked against each other."""
    images, masks = [], []
    for i, (fi, fm) in enumerate(zip(sup_images, sup_masks)):
        name = display_name(fi.filename, f"support_{i + 1}")
        images.append(as_image(read_upload(fi.read(), name, "image", limits), name))
        fg, ign = as_mask(read_upload(fm.read(), f"mask of {name}", "mask", limits), f"mask of {name}")
        if fg.shape != images[-1].shape[:2]:
            raise UploadError(f"the mask of {name} is {fg.shape[1]}x{fg.shape[0]} but {name} is "
                              f"{images[-1].shape[1]}x{images[-1].shape[0]}: masks must match their image")
        if not fg.any():
            raise UploadError(f"the mask of {name} is empty: mark the object (white or any colour on "
                              "black), or draw on the image")
        masks.append(np.where(ign, 255, fg).astype(np.uint8))  # 0/1, 255 = void
    return images, masks


def _segment(adapted, queries: list, threshold: float | None, limits: Limits) -> tuple[list, list]:
    """(results shown in the page, masks for the zip) of the images to segment, one photo decoded at a time."""
    names = [display_name(f.filename, f"image_{j + 1}") for j, f in enumerate(queries)]
    out, zipped = [], []
    for f, name, stem in zip(queries, names, _unique(names)):
        img = as_image(read_upload(f.read(), name, "image", limits), name)
        pred = adapted.predict(img, threshold=threshold)
        zipped.append((f"{stem}.png", _png(pred.mask.astype(np.uint8) * 255)))
        out.append({"name": name, "width": int(img.shape[1]), "height": int(img.shape[0]),
                    "foreground_fraction": round(pred.foreground_fraction, 4),
                    "confidence": round(pred.confidence, 4),
                    "overlay": "data:image/png;base64," + base64.b64encode(_png(_preview(img, pred.mask))).decode()})
        del img, pred
    return out, zipped


def adapt_request(segmenter, request, limits: Limits, results: Results, model_lock: threading.Lock) -> dict:
    """``POST /api/adapt``: check the whole request (counts, threshold) before any work, adapt, segment; the JSON
    answer. A bad request is a :class:`~fewseg.errors.FewsegError` (an UploadError or a DataError)."""
    sup_images, sup_masks = request.files.getlist("support_image"), request.files.getlist("support_mask")
    queries = request.files.getlist("query")
    _check_counts(sup_images, sup_masks, queries, limits)
    threshold = _threshold(request.form)
    images, masks = _read_support(sup_images, sup_masks, limits)
    t0 = time.perf_counter()
    with model_lock:
        adapted = segmenter.adapt(images, masks)
    shots = len(images)
    del images, masks
    out, zipped = _segment(adapted, queries, threshold, limits)
    seconds = time.perf_counter() - t0
    key = results.add(zipped)
    return {"id": key, "seconds": round(seconds, 3), "shots": shots, "steps": adapted.info["steps"],
            "zip": f"/api/masks/{key}.zip", "results": out}


def model_info(segmenter, limits: Limits) -> dict:
    """``GET /api/info``: the model and the page's limits."""
    p = segmenter.preprocessing
    return {"checkpoint": segmenter.source, "algorithm": segmenter.algorithm.name,
            "image_size": p.image_size, "resize": p.resize, "channels": p.channels,
            "steps": segmenter.default_steps, "adaptation": segmenter.describe_adaptation(),
            "threshold": segmenter.threshold,
            "max_support": limits.support, "max_queries": limits.queries,
            "max_file_mb": limits.file_bytes // 2**20, "max_request_mb": limits.request_bytes // 2**20}


def zip_of(masks: list[tuple[str, bytes]]) -> bytes:
    """The masks of one adaptation as a zip (``masks/<name>.png``)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in masks:
            z.writestr(f"masks/{name}", data)
    return buf.getvalue()


def create_app(segmenter, limits: Limits | None = None):
    """The Flask app serving ``segmenter`` (a :class:`~fewseg.segmenter.Segmenter`), uploads checked against
    ``limits`` (default :class:`~fewseg.webapp.uploads.Limits`)."""
    from flask import Flask, Response, jsonify, request
    from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

    limits = limits or Limits()
    app = Flask("fewseg.webapp", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = limits.request_bytes
    results, model_lock = Results(), threading.Lock()
    page = (files("fewseg.webapp") / "static" / "index.html").read_text(encoding="utf-8")

    def fail(message: str, status: int = 400):
        return jsonify({"error": message}), status

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc):
        return fail(f"upload too large: the limit is {limits.request_bytes / 2**20:.0f} MB per request", 413)

    @app.errorhandler(HTTPException)
    def http_error(exc):
        return fail(exc.description.splitlines()[0] if exc.description else exc.name, exc.code or 400)

    @app.errorhandler(Exception)
    def internal(exc):  # a bug: one line, never a traceback
        text = str(exc).strip().splitlines()
        return fail(f"internal error ({type(exc).__name__}{': ' + text[0][:200] if text else ''})", 500)

    @app.get("/")
    def index():
        return Response(page, mimetype="text/html")

    @app.get("/api/info")
    def info():
        return jsonify(model_info(segmenter, limits))

    @app.post("/api/adapt")
    def adapt():
        try:
            return jsonify(adapt_request(segmenter, request, limits, results, model_lock))
        except FewsegError as exc:
            return fail(str(exc))

    @app.get("/api/masks/<key>.zip")
    def download(key: str):
        masks = results.get(key)
        if masks is None:
            return fail("these results are gone (the server keeps the last 16): press Adapt again", 404)
        return Response(zip_of(masks), mimetype="application/zip",
                        headers={"Content-Disposition": "attachment; filename=fewseg_masks.zip"})

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


def serve(checkpoint, host: str = "127.0.0.1", port: int = 7860, device: str = "cpu", log=print) -> None:
    """``fewseg serve``: load ``checkpoint``, serve the page until Ctrl-C (KeyboardInterrupt)."""
    try:
        import flask  # noqa: F401
    except ImportError:
        raise FewsegError('fewseg serve needs Flask: pip install "fewseg[serve]"') from None
    from fewseg.segmenter import load
    server = make_server(load(checkpoint, device), host, port)
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
