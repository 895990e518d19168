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

import threading
import time
import weakref
from importlib.resources import files

import numpy as np

from fewseg.data.io import IMAGE_EXTS
from fewseg.data.pairing import MASK_SUFFIX
from fewseg.errors import FewsegError
from fewseg.inputs import as_image
from fewseg.webapp import sessions
from fewseg.webapp.forms import (
    check_counts,
    check_queries,
    parse_threshold,
    read_mask,
    read_support,
    segment_images,
    support_kinds,
)
from fewseg.webapp.sessions import Result, Store, data_url, png
from fewseg.webapp.uploads import Limits, UploadError, display_name, read_upload

STATIC = ("app.js", "pairing.js")  # served under /static/


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
        kinds = support_kinds(request.form, len(sup_images))
        check_counts(sup_images, sup_masks, kinds, queries, self.limits)
        threshold = parse_threshold(request.form, self.segmenter.threshold)
        images, masks = read_support(sup_images, sup_masks, kinds, self.limits)
        negatives = sum(not (m == 1).any() for m in masks)
        t0 = time.perf_counter()
        with self.model_lock:
            adapted = self.segmenter.adapt(images, masks)
        adapted.info.setdefault("negatives", negatives)
        del images, masks
        out, items = segment_images(adapted, queries, threshold, self.limits)
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
        check_queries(queries, self.limits)
        threshold = parse_threshold(request.form, adapted.threshold)
        t0 = time.perf_counter()
        out, items = segment_images(adapted, queries, threshold, self.limits)
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
        fg, ign = read_mask(image, fm, name, self.limits)
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

    state = App(segmenter, limits, keep, budget)
    limits = state.limits
    app = Flask("fewseg.webapp", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = limits.request_bytes
    app.extensions["fewseg"] = state
    static = files("fewseg.webapp") / "static"
    page = (static / "index.html").read_text(encoding="utf-8")
    scripts = {name: (static / name).read_text(encoding="utf-8") for name in STATIC}
    _add_error_handlers(app, limits)

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

    _add_result_routes(app, state)
    return app


def fail(message: str, status: int = 400):
    """The JSON answer of every failure: ``{"error": "<one line>"}`` and its status."""
    from flask import jsonify
    return jsonify({"error": message}), status


def _add_error_handlers(app, limits: Limits) -> None:
    """Every failure one line of JSON: too large (413), HTTP errors, user errors (400), bugs (500)."""
    from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

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


def _add_result_routes(app, state: App) -> None:
    """The routes over kept results: re-cut at a threshold, masks and the adapted model as zips."""
    from flask import Response, jsonify, request
    gone = "these results are gone (the server keeps the last 16): press Adapt again"

    def result_or_none(key: str):
        return state.results.get(key)

    @app.get("/api/results/<key>")
    def rethreshold(key: str):
        result = result_or_none(key)
        if result is None:
            return fail(gone, 404)
        t = parse_threshold(request.args, result.threshold)
        return jsonify({"id": key, "threshold": t, "zip": f"/api/masks/{key}.zip?threshold={t}",
                        "model": f"/api/model/{key}.zip?threshold={t}", "results": result.stats(t)})

    @app.get("/api/masks/<key>.zip")
    def download(key: str):
        result = result_or_none(key)
        if result is None:
            return fail(gone, 404)
        data = result.masks_zip(parse_threshold(request.args, result.threshold))
        return Response(data, mimetype="application/zip",
                        headers={"Content-Disposition": "attachment; filename=fewseg_masks.zip"})

    @app.get("/api/model/<key>.zip")
    def download_model(key: str):
        result = result_or_none(key)
        adapted = None if result is None else state.models.get(result.model_id)
        if adapted is None:
            return fail(gone, 404)
        data = sessions.model_zip(adapted, parse_threshold(request.args, result.threshold))
        return Response(data, mimetype="application/zip",
                        headers={"Content-Disposition": f"attachment; filename={sessions.MODEL_FOLDER}.zip"})


def make_server(segmenter, host: str = "127.0.0.1", port: int = 7860, limits: Limits | None = None):
    """A threaded WSGI server for the app (``.serve_forever()``, ``.shutdown()``, ``.server_port``)."""
    from werkzeug.serving import make_server as werkzeug_server
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise FewsegError(f"cannot listen on port {port!r}: a port is 0-65535 (0: any free port)")
    try:
        return werkzeug_server(host, port, RequestThreads(create_app(segmenter, limits)), threaded=True)
    except OSError as exc:
        raise FewsegError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


class RequestThreads:
    """WSGI wrapper that remembers the threads serving requests, so that ``fewseg serve`` lets them finish before
    the interpreter exits: a request thread still running torch code while Python finalises is killed inside C++
    and aborts the process (SIGABRT, "terminate called without an active exception") instead of exiting 130."""

    def __init__(self, app):
        self.app = app
        self.threads = weakref.WeakSet()

    def __call__(self, environ, start_response):
        self.threads.add(threading.current_thread())
        return self.app(environ, start_response)

    def join(self, timeout: float = 30.0) -> None:
        """Wait (at most ``timeout`` seconds in all) for the threads still serving a request."""
        deadline = time.monotonic() + timeout
        for thread in list(self.threads):
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))


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
        server.app.join()       # requests in flight finish before Python exits
    raise KeyboardInterrupt     # ... so that fewseg exits 130, as after any Ctrl-C
