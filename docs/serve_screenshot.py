"""docs/serve.png: the page of ``fewseg serve`` after one adaptation, taken in headless Chromium.

    python docs/serve_screenshot.py runs/demo docs/serve.png      # a run written by `fewseg demo`

Three support images of one synthetic test class (never seen in training): two with uploaded masks, one with
a rough mask drawn in the page; three images of the class to segment (96x96, twice the network's size).
Needs Debian's chromium and chromium-driver, and selenium (the dev extra).
"""
from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

import fewseg
from fewseg.webapp.server import make_server


def write_class(folder: Path, size: int = 96) -> tuple[list[Path], list[Path], list[Path]]:
    ds = fewseg.create_dataset("synthetic", split="test", seed=0, image_size=size)
    c = ds.class_ids()[7]
    photos, masks = [], []
    for key in ds.items(c)[:6]:
        s = ds.load(key, c)
        photos.append(folder / f"{ds.class_names[c].replace('/', '-')}_{key}.png")
        Image.fromarray((s.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(photos[-1])
        masks.append(folder / f"{photos[-1].stem}_mask.png")
        Image.fromarray((s.mask[0].numpy() * 255).astype(np.uint8)).save(masks[-1])
    return photos[:3], masks[:2], photos[3:]


def main(checkpoint: str, output: str) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    folder = Path(tempfile.mkdtemp())
    support, masks, queries = write_class(folder)
    server = make_server(fewseg.load(checkpoint), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1150,1330"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(f"http://127.0.0.1:{server.server_port}/")
        wait.until(lambda d: "model:" in d.find_element(By.ID, "info").text)
        driver.find_element(By.ID, "support-files").send_keys("\n".join(str(p) for p in support))
        cards = wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".support-card")) == 3
                           and d.find_elements(By.CSS_SELECTOR, ".support-card"))
        for card, mask in zip(cards, masks):
            card.find_element(By.CSS_SELECTOR, "input.mask-file").send_keys(str(mask))
        canvas = cards[2].find_element(By.CSS_SELECTOR, "canvas.paint")
        wait.until(lambda d: d.execute_script("return arguments[0].width", canvas) > 0)
        truth = np.asarray(Image.open(str(support[2]).replace(".png", "_mask.png"))) > 0
        ys, xs = np.nonzero(truth)                      # scribble over the object, as a person would
        scale = 240 / truth.shape[1]
        cy, cx = (ys.mean() - truth.shape[0] / 2) * scale, (xs.mean() - truth.shape[1] / 2) * scale
        r = 0.3 * min(np.ptp(ys), np.ptp(xs)) * scale
        chain = ActionChains(driver).move_to_element_with_offset(canvas, int(cx), int(cy)).click_and_hold()
        last = (0, 0)
        for a in np.linspace(0, 4 * np.pi, 40):                 # a spiral out from the object's centre
            point = (int(r * a / (4 * np.pi) * np.cos(a)), int(r * a / (4 * np.pi) * np.sin(a)))
            chain = chain.move_by_offset(point[0] - last[0], point[1] - last[1])
            last = point
        chain.release().perform()
        driver.find_element(By.ID, "query-files").send_keys("\n".join(str(p) for p in queries))
        driver.find_element(By.ID, "adapt").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "canvas.overlay")) == 3)
        time.sleep(0.5)
        driver.save_screenshot(output)
        print(f"wrote {output}")
    finally:
        driver.quit()
        server.shutdown()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/demo", sys.argv[2] if len(sys.argv) > 2 else "docs/serve.png")
