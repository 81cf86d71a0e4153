"""End to end in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, Selenium):
``python src/main.py serve`` with the shipped CNN, upload ``examples/astronaut.jpg`` through the
file picker, see the box and a label, correct the gender, reload and see the correction, then
open a run page and see its plots load.

``SAVE_SCREENSHOT=1`` also writes the page to ``docs/images/serve.png`` (for the README), so
an ordinary test run never rewrites a tracked file.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "examples" / "astronaut.jpg"
SCREENSHOT = ROOT / "docs" / "images" / "serve.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="needs Debian's chromium and chromium-driver (apt-get install -y "
                                       "chromium chromium-driver; .ci/run does)")
webdriver = pytest.importorskip("selenium.webdriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``python src/main.py serve`` on a free loopback port; yields its base URL."""
    tmp = tmp_path_factory.mktemp("browser")
    port = free_port()
    log = (tmp / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "src" / "main.py"), "serve", "--model_type", "normal", f"serve.port={port}",
         f"serve.data_dir={tmp / 'data'}", f"serve.runs_roots=[{ROOT / 'statistics'}]",
         f"serve.retrain_dir={tmp / 'retrain'}", f"hydra.run.dir={tmp / 'run'}"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail("serve exited: " + (tmp / "serve.log").read_text()[-2000:])
            if "Serving on" in (tmp / "serve.log").read_text():
                break
            time.sleep(0.2)
        else:
            pytest.fail("serve did not start: " + (tmp / "serve.log").read_text()[-2000:])
        assert f"Serving on {url}/" in (tmp / "serve.log").read_text()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout: float = 60.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


def loaded(driver, element) -> bool:
    return bool(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", element))


@pytest.mark.slow
def test_upload_correct_reload_and_browse_runs(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(server + "/")
    browser.find_element(By.ID, "file").send_keys(str(ASTRONAUT))
    card = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#faces .face"))[0]
    photo = browser.find_element(By.ID, "photo")
    wait_for(browser, lambda d: loaded(d, photo))
    assert wait_for(browser, lambda d: loaded(d, card.find_element(By.CSS_SELECTOR, "img.crop")))
    assert card.find_element(By.TAG_NAME, "h3").text == "Face 1"
    label = card.find_element(By.CSS_SELECTOR, ".pred").text
    assert label.startswith("model: ") and " years, " in label and "%" in label
    predicted = "female" if " female " in label else "male"
    other = "male" if predicted == "female" else "female"

    Select(card.find_element(By.NAME, "gender")).select_by_visible_text(other)
    card.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(browser, lambda d: other in d.find_element(By.CSS_SELECTOR, "#faces .face .fix").text)
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None

    browser.refresh()
    fix = wait_for(browser, lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, "#faces .face .fix") if e.text])
    assert fix[0].text == f"corrected: {other}"
    photo = browser.find_element(By.ID, "photo")
    wait_for(browser, lambda d: loaded(d, photo))
    if os.environ.get("SAVE_SCREENSHOT") == "1":  # the README's picture: a plausible correction
        card = browser.find_element(By.CSS_SELECTOR, "#faces .face")
        Select(card.find_element(By.NAME, "gender")).select_by_visible_text(predicted)
        card.find_element(By.NAME, "age").clear()
        card.find_element(By.NAME, "age").send_keys("42")
        card.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait_for(browser, lambda d: "42 years" in d.find_element(By.CSS_SELECTOR, "#faces .face .fix").text)
        photo = browser.find_element(By.ID, "photo")
        wait_for(browser, lambda d: loaded(d, photo))
        time.sleep(0.5)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SCREENSHOT))

    browser.get(server + "/runs")
    link = wait_for(browser, lambda d: d.find_elements(By.LINK_TEXT, "statistics/normal"))[0]
    link.click()
    plots = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".plots img"))
    assert len(plots) == len(list((ROOT / "statistics" / "normal").glob("*.png")))
    for img in plots:
        browser.execute_script("arguments[0].scrollIntoView()", img)
        wait_for(browser, lambda d, img=img: loaded(d, img))


def test_a_photo_dropped_on_the_page_is_uploaded(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    # WebDriver can't drag a file in from the desktop. A file input made for the test holds the
    # real file, and the drag events the browser would send carry it onto the drop zone; only the
    # page's drop handler can upload it (the page's own picker stays empty).
    source = browser.execute_script(
        "const input = document.createElement('input'); input.type = 'file'; input.id = 'test-source';"
        "document.body.appendChild(input); return input;")
    source.send_keys(str(ASTRONAUT))
    drag = ("const data = new DataTransfer(); data.items.add(document.getElementById('test-source').files[0]);"
            "for (const type of arguments[0]) document.getElementById('drop').dispatchEvent("
            "new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: data}));")
    browser.execute_script(drag, ["dragenter", "dragover"])
    assert "over" in browser.find_element(By.ID, "drop").get_attribute("class").split()
    browser.execute_script(drag, ["drop"])
    card = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#faces .face"))[0]
    assert card.find_element(By.CSS_SELECTOR, ".pred").text.startswith("model: ")
    assert "over" not in browser.find_element(By.ID, "drop").get_attribute("class").split()
    assert browser.find_element(By.ID, "file").get_attribute("value") == ""


def test_an_error_shows_in_one_line(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    browser.get(server + "/")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    error = wait_for(browser, lambda d: d.find_element(By.ID, "error").text)
    assert error.startswith("error: notes.jpg: ") and "\n" not in error
