"""``fewseg serve``: a local web page to adapt a checkpoint to a new class and segment images in the browser.

A small Flask app (:mod:`fewseg.webapp.server`) and one static page (``static/index.html``, ``app.js`` and
``pairing.js``: plain HTML and JavaScript, no build step): upload support images with masks (several files are
paired by name, the CLI's rule) or draw a rough mask on them (brush, eraser, undo), mark images without the class,
upload images to segment, press Adapt, see overlays, re-cut them with a threshold slider, download the masks and
the adapted model as zips. Uploads are checked by :mod:`fewseg.webapp.uploads`; what is kept between requests
(models, probabilities) by :mod:`fewseg.webapp.sessions`. Needs ``pip install "fewseg[serve]"`` (Flask).
"""
