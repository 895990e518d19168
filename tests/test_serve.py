"""fewseg serve: the page's API (checked uploads, one-line errors, zip of masks), the command (127.0.0.1,
Ctrl-C), and the whole page in headless Chromium: upload and draw support masks, adapt, overlay, download."""
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from userpath import labelled, write_images, write_support

pytest.importorskip("flask", reason="fewseg serve needs Flask: pip install 'fewseg[serve]'")
from fewseg.webapp.server import create_app, make_server
from fewseg.webapp.uploads import Limits

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"




def png(array, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


def form(n_support=2, n_query=2, seed=0):
    rng = np.random.default_rng(seed)
    data = {"support_image": [], "support_mask": [], "query": []}
    for i in range(n_support):
        img, mask = labelled(rng, 30 + i, 40)
        data["support_image"].append((io.BytesIO(png(img, "JPEG")), f"s{i}.jpg"))
        data["support_mask"].append((io.BytesIO(png(mask)), f"s{i}.png"))
    for j in range(n_query):
        img, _ = labelled(rng, 25 + 5 * j, 33)
        data["query"].append((io.BytesIO(png(img)), f"q{j}.png"))
    return data


def test_adapt_returns_overlays_and_a_zip_of_masks_at_each_size(seg):
    client = create_app(seg).test_client()
    info = client.get("/api/info").get_json()
    assert info["image_size"] == 24 and info["max_support"] == 10
    r = client.post("/api/adapt", data=form(), content_type="multipart/form-data")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["shots"] == 2 and [x["name"] for x in body["results"]] == ["q0.png", "q1.png"]
    assert all(x["overlay"].startswith("data:image/png;base64,") for x in body["results"])
    z = client.get(body["zip"])
    assert z.status_code == 200 and z.mimetype == "application/zip"
    with zipfile.ZipFile(io.BytesIO(z.data)) as archive:
        assert archive.namelist() == ["masks/q0.png", "masks/q1.png"]
        sizes = [Image.open(io.BytesIO(archive.read(n))).size for n in archive.namelist()]
    assert sizes == [(33, 25), (33, 30)]


def test_bad_uploads_get_a_one_line_message_not_a_traceback(seg):
    client = create_app(seg, Limits(file_bytes=50_000, request_bytes=400_000)).test_client()

    def post(data):
        r = client.post("/api/adapt", data=data, content_type="multipart/form-data")
        body = r.get_json()
        assert r.status_code >= 400 and set(body) == {"error"}, body
        assert "\n" not in body["error"] and "Traceback" not in body["error"]
        return body["error"]

    data = form()
    data["query"][0] = (io.BytesIO(b"#!/bin/sh\nrm -rf /\n"), "evil.png")
    assert post(data) == "evil.png is not an image fewseg can read (PNG, JPEG, BMP, TIFF, WEBP)"
    data = form()
    data["query"][0] = (io.BytesIO(png(np.zeros((8, 8, 3), np.uint8), "GIF")), "anim.gif")
    assert "anim.gif is a GIF file" in post(data)
    data = form()
    data["support_mask"] = data["support_mask"][:1]
    assert "2 support images but 1 masks" in post(data)
    data = form()
    data["support_mask"][1] = (io.BytesIO(png(np.zeros((31, 40), np.uint8))), "s1.png")
    assert "the mask of s1.jpg is empty" in post(data)
    data = form()
    data["support_mask"][1] = (io.BytesIO(png(np.full((5, 5), 255, np.uint8))), "s1.png")
    assert "the mask of s1.jpg is 5x5 but s1.jpg is 40x31" in post(data)
    assert "at least one image to segment" in post({**form(), "query": []})
    assert "the page takes 1-10" in post(form(n_support=11, n_query=1))
    noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    data = form()
    data["query"][0] = (io.BytesIO(png(noise)), "big.png")
    assert "big.png is 0.1 MB; the limit per file is 0 MB" in post(data)
    data = form()
    data["query"] = [(io.BytesIO(png(noise)), f"n{i}.png") for i in range(4)]
    assert "upload too large" in post(data)
    missing = client.get("/api/masks/nosuchid.zip")
    assert missing.status_code == 404 and "press Adapt again" in missing.get_json()["error"]
    assert client.get("/api/masks/../../etc/passwd").status_code == 404


def test_file_names_from_the_browser_are_only_shown_never_used_as_paths(seg):
    data = form(n_query=1)
    data["query"][0] = (data["query"][0][0], "../../../etc/pass wd.png")
    client = create_app(seg).test_client()
    body = client.post("/api/adapt", data=data, content_type="multipart/form-data").get_json()
    assert body["results"][0]["name"] == "pass_wd.png"
    with zipfile.ZipFile(io.BytesIO(client.get(body["zip"]).data)) as archive:
        assert archive.namelist() == ["masks/pass_wd.png"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fewseg_serve_binds_loopback_by_default_and_ctrl_c_exits_130(run):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "fewseg", "serve", "--checkpoint", str(run), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://([\d.]+):(\d+)/", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        assert match.group(1) == "127.0.0.1"
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{match.group(2)}/api/info", timeout=30) as r:
            assert b"image_size" in r.read()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        assert "interrupted" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


# --- the page in a real browser -------------------------------------------------------------------------
def chromium_driver(download_dir: Path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (in the dev extra)")
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them: "
                    "apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1400"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


@pytest.fixture
def server(seg):
    srv = make_server(seg, "127.0.0.1", free_port())
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}/"
    srv.shutdown()
    thread.join(timeout=10)


def test_the_page_in_chromium_uploads_draws_adapts_shows_overlays_and_downloads_masks(server, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    support = write_support(tmp_path / "support", n=2, size=(60, 80))
    queries = write_images(tmp_path / "queries", sizes=((48, 64), (90, 70)))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = chromium_driver(downloads)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(server)
        wait.until(lambda d: "model:" in d.find_element(By.ID, "info").text)
        driver.find_element(By.ID, "support-files").send_keys(
            "\n".join(str(support / f"s{i}.jpg") for i in range(2)))
        cards = wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".support-card")) == 2
                           and d.find_elements(By.CSS_SELECTOR, ".support-card"))
        cards[0].find_element(By.CSS_SELECTOR, "input.mask-file").send_keys(str(support / "s0.png"))  # uploaded
        canvas = cards[1].find_element(By.CSS_SELECTOR, "canvas.paint")                             # drawn
        wait.until(lambda d: d.execute_script("return arguments[0].width", canvas) == 83)   # the image's own width
        ActionChains(driver).move_to_element_with_offset(canvas, -40, -20).click_and_hold() \
            .move_by_offset(60, 0).move_by_offset(0, 40).move_by_offset(-60, 0).release().perform()
        assert "drawn" in cards[1].find_element(By.CSS_SELECTOR, ".state").text
        driver.find_element(By.ID, "query-files").send_keys("\n".join(str(q) for q in queries))
        driver.find_element(By.ID, "adapt").click()
        overlays = wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "img.overlay")) == 2
                              and d.find_elements(By.CSS_SELECTOR, "img.overlay"))
        assert all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", o) > 0
                   for o in overlays)
        assert driver.execute_script("return arguments[0].naturalWidth", overlays[1]) == 70
        assert "adapted on 2 image(s)" in driver.find_element(By.ID, "status").text
        if os.environ.get("FEWSEG_SCREENSHOT"):                      # docs/serve.png
            driver.save_screenshot(os.environ["FEWSEG_SCREENSHOT"])
        wait.until(ec.element_to_be_clickable((By.ID, "download"))).click()
        deadline = time.time() + 30
        while time.time() < deadline and not list(downloads.glob("*.zip")):
            time.sleep(0.2)
        (zip_path,) = list(downloads.glob("*.zip"))
        with zipfile.ZipFile(zip_path) as archive:
            assert archive.namelist() == ["masks/q0.png", "masks/q1.png"]
            assert Image.open(io.BytesIO(archive.read("masks/q1.png"))).size == (70, 90)

        # a bad upload: a message in the page, no stack trace
        bad = tmp_path / "notes.png"
        bad.write_text("not a picture")
        driver.find_element(By.ID, "query-files").send_keys(str(bad))
        driver.find_element(By.ID, "adapt").click()
        error = wait.until(lambda d: d.find_element(By.ID, "error").is_displayed() and d.find_element(By.ID, "error"))
        assert error.text == "notes.png is not an image fewseg can read (PNG, JPEG, BMP, TIFF, WEBP)"
        assert "Traceback" not in driver.page_source
    finally:
        driver.quit()


def test_large_photos_are_previewed_small_and_zipped_full_size(seg):
    import base64
    data = form(n_query=1)
    img, _ = labelled(np.random.default_rng(2), 1200, 1500)
    data["query"] = [(io.BytesIO(png(img, "JPEG")), "big.jpg")]
    client = create_app(seg).test_client()
    body = client.post("/api/adapt", data=data, content_type="multipart/form-data").get_json()
    (result,) = body["results"]
    assert (result["width"], result["height"]) == (1500, 1200)
    shown = Image.open(io.BytesIO(base64.b64decode(result["overlay"].split(",", 1)[1])))
    assert shown.size == (1024, 819)
    with zipfile.ZipFile(io.BytesIO(client.get(body["zip"]).data)) as archive:
        assert Image.open(io.BytesIO(archive.read("masks/big.png"))).size == (1500, 1200)
