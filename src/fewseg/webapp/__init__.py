"""``fewseg serve``: a local web page to adapt a checkpoint to a new class and segment images in the browser.

A small Flask app (:mod:`fewseg.webapp.server`) and one static page (``static/index.html``, plain HTML and
JavaScript, no build step): upload support images with masks or draw a rough mask on them, upload images to
segment, press Adapt, see overlays, download the masks as a zip. Uploads are checked by
:mod:`fewseg.webapp.uploads`. Needs ``pip install "fewseg[serve]"`` (Flask).
"""
