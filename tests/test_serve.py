"""fewseg serve: the page's API (checked uploads, one-line errors, zip of masks), the command (127.0.0.1,
Ctrl-C), and the whole page in headless Chromium: several files paired by name, an uploaded mask shown over its
photo, brush, eraser and undo, a negative example, adapt, overlays with numbers that say what they are, the
threshold slider re-cutting without adapting again, masks and the adapted model downloaded (the new routes' API
tests: tests/test_webapp_api.py)."""
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
from test_webapp_api import PAIRING_NAMES, cli_pairs
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


def test_adapt_returns_previews_and_a_zip_of_masks_at_each_size(seg):
    client = create_app(seg).test_client()
    info = client.get("/api/info").get_json()
    assert info["image_size"] == 24 and info["max_support"] == 10
    r = client.post("/api/adapt", data=form(), content_type="multipart/form-data")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["shots"] == 2 and [x["name"] for x in body["results"]] == ["q0.png", "q1.png"]
    assert all(x["image"].startswith("data:image/jpeg;base64,") for x in body["results"])
    assert all(x["probabilities"].startswith("data:image/png;base64,") for x in body["results"])
    assert all("confidence" not in x for x in body["results"])
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
    data["support_mask"] = [(io.BytesIO(png(np.zeros((30 + i, 40), np.uint8))), f"s{i}.png") for i in range(2)]
    assert post(data).startswith("mark the object in at least one support image")
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


def test_large_photos_are_previewed_small_and_zipped_full_size(seg):
    import base64
    data = form(n_query=1)
    img, _ = labelled(np.random.default_rng(2), 1200, 1500)
    data["query"] = [(io.BytesIO(png(img, "JPEG")), "big.jpg")]
    client = create_app(seg).test_client()
    body = client.post("/api/adapt", data=data, content_type="multipart/form-data").get_json()
    (result,) = body["results"]
    assert (result["width"], result["height"]) == (1500, 1200)
    for preview in ("image", "probabilities"):
        shown = Image.open(io.BytesIO(base64.b64decode(result[preview].split(",", 1)[1])))
        assert shown.size == (1024, 819)
    with zipfile.ZipFile(io.BytesIO(client.get(body["zip"]).data)) as archive:
        assert Image.open(io.BytesIO(archive.read("masks/big.png"))).size == (1500, 1200)


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


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def driver(downloads):
    browser = chromium_driver(downloads)
    yield browser
    browser.quit()


@pytest.fixture
def server(seg):
    srv = make_server(seg, "127.0.0.1", free_port())
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}/"
    srv.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def adapt_calls(seg, monkeypatch):
    """Counts the server's adaptations (the page's segmenter is ``seg``)."""
    calls, original = [], seg.adapt
    monkeypatch.setattr(seg, "adapt", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def wait_for_file(folder: Path, name: str, timeout: float = 30) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline and not (folder / name).is_file():
        time.sleep(0.2)
    assert (folder / name).is_file(), sorted(p.name for p in folder.iterdir())
    return folder / name


WHITE = "const c = arguments[0].fewseg.binary; " \
        "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)" \
        ".filter((v, i) => i % 4 === 0 && v > 127).length"   # white pixels of the mask a card sends
GREEN_AT = "const c = arguments[0], d = c.getContext('2d').getImageData(arguments[1], arguments[2], 1, 1).data; " \
           "return [d[1], d[3]]"


def test_the_page_in_chromium_pairs_draws_erases_adapts_recuts_and_downloads(server, driver, downloads, tmp_path,
                                                                           adapt_calls):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    import fewseg

    support = write_support(tmp_path / "support", n=3, size=(60, 80))
    (support / "s2.png").rename(support / "s2_mask.png")   # the other naming of the CLI's rule
    (support / "s1.png").unlink()                          # s1: no mask file, drawn in the page
    (support / "notes.txt").write_text("not an image")
    queries = write_images(tmp_path / "queries", sizes=((48, 64), (90, 70)))
    wait = WebDriverWait(driver, 60)
    driver.get(server)
    wait.until(lambda d: "model:" in d.find_element(By.ID, "info").text)

    # several files at once: masks paired with their images by name
    names = ["s0.jpg", "s0.png", "s1.jpg", "s2.jpg", "s2_mask.png", "notes.txt"]
    driver.find_element(By.ID, "support-files").send_keys("\n".join(str(support / n) for n in names))
    cards = wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".support-card")) == 3
                       and d.find_elements(By.CSS_SELECTOR, ".support-card"))
    assert [c.find_element(By.CSS_SELECTOR, ".name").text for c in cards] == ["s0.jpg", "s1.jpg", "s2.jpg"]
    state = [c.find_element(By.CSS_SELECTOR, ".state") for c in cards]
    wait.until(lambda d: "uploaded file" in state[0].text and "uploaded file" in state[2].text)
    assert "no mask yet" in state[1].text
    assert "notes.txt (not an image file" in driver.find_element(By.ID, "support-note").text

    # the uploaded mask is shown over its photo, where the mask is: labelled()'s square covers the centre
    paint0 = cards[0].find_element(By.CSS_SELECTOR, "canvas.paint")
    wait.until(lambda d: d.execute_script("return arguments[0].width", paint0) == 80)
    assert driver.execute_script(GREEN_AT, paint0, 40, 30) == [255, 255]
    assert driver.execute_script(GREEN_AT, paint0, 2, 2)[1] == 0
    assert re.search(r"uploaded file s0\.png, 2\d\.\d% of the image", state[0].text), state[0].text
    assert "uploaded file s2_mask.png" in state[2].text

    # brush, eraser, undo on s1
    canvas = cards[1].find_element(By.CSS_SELECTOR, "canvas.paint")
    wait.until(lambda d: d.execute_script("return arguments[0].width", canvas) == 83)   # the image's own width

    def white():
        return driver.execute_script(WHITE, cards[1])

    ActionChains(driver).move_to_element_with_offset(canvas, -40, -20).click_and_hold() \
        .move_by_offset(60, 0).move_by_offset(0, 40).move_by_offset(-60, 0).release().perform()
    drawn = white()
    assert drawn > 0 and "drawn" in state[1].text
    cards[1].find_element(By.CSS_SELECTOR, "button.tool-eraser").click()
    ActionChains(driver).move_to_element_with_offset(canvas, -40, 0).click_and_hold().move_by_offset(80, 0) \
        .release().perform()
    erased = white()
    assert 0 < erased < drawn
    undo = cards[1].find_element(By.CSS_SELECTOR, "button.undo")
    undo.click()
    assert white() == drawn
    undo.click()
    assert white() == 0 and "no mask yet" in state[1].text and not undo.is_enabled()
    cards[1].find_element(By.CSS_SELECTOR, "button.tool-brush").click()
    ActionChains(driver).move_to_element_with_offset(canvas, -40, -20).click_and_hold() \
        .move_by_offset(60, 0).move_by_offset(0, 40).move_by_offset(-60, 0).release().perform()
    assert white() == drawn

    # s2: none of the class (a negative example), its mask file notwithstanding
    cards[2].find_element(By.CSS_SELECTOR, "input.negative").click()
    assert "none of the class" in state[2].text

    driver.find_element(By.ID, "query-files").send_keys("\n".join(str(q) for q in queries))
    driver.find_element(By.ID, "adapt").click()
    overlays = wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "canvas.overlay")) == 2
                          and d.find_elements(By.CSS_SELECTOR, "canvas.overlay"))
    assert [driver.execute_script("return [arguments[0].width, arguments[0].height]", o) for o in overlays] \
        == [[64, 48], [70, 90]]
    status = driver.find_element(By.ID, "status").text
    assert "adapted on 3 image(s) (1 of them none of the class)" in status, status
    assert len(adapt_calls) == 1

    # the numbers say what they are; no unexplained "confidence"
    captions = driver.find_elements(By.CSS_SELECTOR, "figcaption.numbers")
    for c in captions:
        assert re.search(r"foreground [\d.]+% of the image; mean probability inside the mask [\d.]+|"
                         r"no pixel above the threshold 0\.50 \(highest foreground probability [\d.]+\)", c.text), c.text
        assert "share of this image's pixels" in c.get_attribute("title")
    assert "confidence" not in driver.find_element(By.TAG_NAME, "body").text.lower()
    if os.environ.get("FEWSEG_SCREENSHOT"):                      # docs/serve.png
        driver.save_screenshot(os.environ["FEWSEG_SCREENSHOT"])

    # the threshold slider re-cuts the masks in the page and on the server, without adapting again
    slider = driver.find_element(By.ID, "threshold")

    def cut_at(key: str, value: str) -> tuple[list, list]:
        slider.send_keys(key)
        wait.until(lambda d: slider.get_attribute("data-shown") == value)
        return ([int(o.get_attribute("data-foreground")) for o in overlays],
                [c.text for c in driver.find_elements(By.CSS_SELECTOR, "figcaption.numbers")])

    high, high_text = cut_at(Keys.END, "0.99")
    low, low_text = cut_at(Keys.HOME, "0.01")
    assert sum(low) > sum(high) and low_text != high_text
    assert all("no pixel above the threshold 0.99" in t for t, n in zip(high_text, high) if n == 0)
    assert len(adapt_calls) == 1
    assert driver.execute_script("return performance.getEntriesByType('resource')"
                                 ".filter(e => e.name.includes('/api/adapt')).length") == 1

    # downloads at the slider's threshold: the masks, and the adapted model that fewseg.load_adapted reads
    driver.find_element(By.ID, "download").click()
    with zipfile.ZipFile(wait_for_file(downloads, "fewseg_masks.zip")) as archive:
        assert archive.namelist() == ["masks/q0.png", "masks/q1.png"]
        zipped = np.asarray(Image.open(io.BytesIO(archive.read("masks/q1.png"))))
    assert zipped.shape == (90, 70)
    driver.find_element(By.ID, "download-model").click()
    with zipfile.ZipFile(wait_for_file(downloads, "fewseg_adapted.zip")) as archive:
        archive.extractall(tmp_path / "model")
    adapted = fewseg.load_adapted(tmp_path / "model" / "fewseg_adapted")
    assert adapted.threshold == 0.01 and adapted.info["shots"] == 3
    pred = adapted.predict(queries[1])
    near = np.abs(pred.probabilities - 0.01) < 1e-4                     # kept to 1/65535 on the server
    assert ((zipped > 0) == pred.mask)[~near].all()

    # a bad upload: a message in the page, no stack trace
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    driver.find_element(By.ID, "query-files").send_keys(str(bad))
    driver.find_element(By.ID, "adapt").click()
    error = wait.until(lambda d: d.find_element(By.ID, "error").is_displayed() and d.find_element(By.ID, "error"))
    assert error.text == "notes.png is not an image fewseg can read (PNG, JPEG, BMP, TIFF, WEBP)"
    assert "Traceback" not in driver.page_source


def test_the_pages_pairing_rule_is_the_clis(server, driver, tmp_path):
    driver.get(server)
    page = driver.execute_script("return window.fewsegPairing.pairNames(arguments[0]).pairs", PAIRING_NAMES)
    expected = cli_pairs(tmp_path / "folder", PAIRING_NAMES)
    assert page == expected
    assert ["cat.jpg", "cat.png"] in expected and ["z.jpeg", "z.png"] in expected   # the cases are exercised


def test_a_mask_chosen_after_its_image_joins_its_card_and_ctrl_z_undoes(server, driver, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    support = write_support(tmp_path / "support", n=1, size=(60, 80))
    (support / "s0.png").rename(support / "s0_mask.png")
    wait = WebDriverWait(driver, 60)
    driver.get(server)
    wait.until(lambda d: "model:" in d.find_element(By.ID, "info").text)
    driver.find_element(By.ID, "support-files").send_keys(str(support / "s0.jpg"))
    (card,) = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".support-card"))
    state = card.find_element(By.CSS_SELECTOR, ".state")
    assert "no mask yet" in state.text
    driver.find_element(By.ID, "support-files").send_keys(str(support / "s0_mask.png"))   # a second batch
    wait.until(lambda d: "uploaded file s0_mask.png" in state.text)
    assert len(driver.find_elements(By.CSS_SELECTOR, ".support-card")) == 1
    assert driver.find_element(By.ID, "support-note").text == ""
    full = driver.execute_script(WHITE, card)
    canvas = card.find_element(By.CSS_SELECTOR, "canvas.paint")
    card.find_element(By.CSS_SELECTOR, "button.tool-eraser").click()
    ActionChains(driver).move_to_element(canvas).click_and_hold().move_by_offset(30, 0).release().perform()
    assert driver.execute_script(WHITE, card) < full and "edited" in state.text
    ActionChains(driver).key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()
    assert driver.execute_script(WHITE, card) == full and "uploaded file s0_mask.png" in state.text
