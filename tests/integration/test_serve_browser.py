"""End to end in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, Selenium):
``python src/main.py serve`` with the shipped CNN, upload ``examples/astronaut.jpg`` through the
file picker, see the box and a label, correct the gender, reload and see the correction, then
open a run page and see its plots load. The page by keyboard alone (the picker opens from the
keyboard, a correction is typed and saved), a retrain job shown again after a reload, the
pages checked with axe-core (npm's ``axe-core``, injected into the page: no serious or
critical violation) and at a phone's width (390 px: nothing wider than the screen, controls
44 px tall or more).

``SAVE_SCREENSHOT=1`` also writes the page to ``docs/images/serve.png`` and
``docs/images/serve-phone.png`` (for the README and docs/serve.md), so an ordinary test run
never rewrites a tracked file.
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

ROOT = Path(__file__).resolve().parents[2]
ASTRONAUT = ROOT / "examples" / "astronaut.jpg"
SCREENSHOT = ROOT / "docs" / "images" / "serve.png"
PHONE_SCREENSHOT = ROOT / "docs" / "images" / "serve-phone.png"
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"  # `npm ci` installs it (package.json)
PHONE_WIDTH, FINGER_PX = 390, 44
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
def server_tmp(tmp_path_factory) -> Path:
    """The served app's folder: its data (``data/serve.sqlite3``), retrain runs and log."""
    return tmp_path_factory.mktemp("browser")


@pytest.fixture(scope="module")
def server(server_tmp):
    """``python src/main.py serve`` on a free loopback port; yields its base URL."""
    tmp = server_tmp
    port = free_port()
    log = (tmp / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "src" / "main.py"), "serve", "--model_type", "cnn", f"serve.port={port}",
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
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # DevTools events: the file chooser
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
    link = wait_for(browser, lambda d: d.find_elements(By.LINK_TEXT, "statistics/cnn"))[0]
    link.click()
    plots = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".plots img"))
    assert len(plots) == len(list((ROOT / "statistics" / "cnn").glob("*.png")))
    for img in plots:
        browser.execute_script("arguments[0].scrollIntoView()", img)
        wait_for(browser, lambda d, img=img: loaded(d, img))


@pytest.mark.slow
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


@pytest.mark.slow
def test_an_error_shows_in_one_line(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    browser.get(server + "/")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    error = wait_for(browser, lambda d: d.find_element(By.ID, "error").text)
    assert error.startswith("error: notes.jpg: ") and "\n" not in error


# ------------------------------------------------------------------------------- keyboard, jobs

def tab_to(driver, predicate: str, limit: int = 40):
    """Press Tab until ``predicate`` (JavaScript over ``el``, the focused element) holds; returns it."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    for _ in range(limit):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        if driver.execute_script(f"const el = document.activeElement; return !!({predicate});"):
            return driver.switch_to.active_element
    pytest.fail(f"Tab never reached an element where {predicate}")


def chooser_opened(driver) -> bool:
    import json

    return any(json.loads(e["message"])["message"]["method"] == "Page.fileChooserOpened"
               for e in driver.get_log("performance"))


@pytest.mark.slow
def test_keyboard_alone_uploads_corrects_and_reaches_retrain(server, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server + "/")
    browser.get_log("performance")  # drop what loading the page logged
    browser.execute_cdp_cmd("Page.enable", {})
    browser.execute_cdp_cmd("Page.setInterceptFileChooserDialog", {"enabled": True})
    try:
        picker = tab_to(browser, "el.id === 'file'")
        label = browser.find_element(By.CSS_SELECTOR, "label[for=file]")
        assert browser.execute_script("return getComputedStyle(arguments[0]).outlineStyle", label) != "none"
        ActionChains(browser).send_keys(Keys.ENTER).perform()
        wait_for(browser, chooser_opened, 10)  # Enter on the focused picker opens the file chooser
    finally:
        browser.execute_cdp_cmd("Page.setInterceptFileChooserDialog", {"enabled": False})
    before = browser.execute_script("return location.hash")
    picker.send_keys(str(ASTRONAUT))  # what the chooser hands over
    wait_for(browser, lambda d: d.execute_script("return location.hash") != before)
    status = browser.find_element(By.ID, "status")
    assert status.get_attribute("aria-live") == "polite" and status.text == "1 face found."
    age = tab_to(browser, "el.name === 'age'")
    age.send_keys("37")
    tab_to(browser, "el.type === 'submit'")
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait_for(browser, lambda d: "37 years" in d.find_element(By.CSS_SELECTOR, "#faces .face .fix").text)
    clear = tab_to(browser, "el.classList.contains('clear')")
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#faces .face .fix").text == "")
    assert not clear.is_displayed()  # nothing left to clear
    assert browser.find_element(By.ID, "status").text == "Face 1: correction cleared."
    retrain = tab_to(browser, "el.id === 'retrain'")
    assert retrain.tag_name == "button" and retrain.is_enabled()  # Enter would start it


@pytest.mark.slow
def test_a_retrain_job_is_shown_again_after_a_reload(server, server_tmp, browser):
    """The job is the server's: a row of its database, found again through the session cookie."""
    import json
    import sqlite3

    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    browser.find_element(By.ID, "file").send_keys(str(ASTRONAUT))
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#faces .face"))
    sid = browser.get_cookie("faceattr_session")["value"].split(".")[0]
    job = "ab" * 16
    with sqlite3.connect(server_tmp / "data" / "serve.sqlite3") as db:  # as the job runner writes it
        db.execute("INSERT INTO jobs (id, session, created, state, progress, phase, eta_s) VALUES "
                   "(?, ?, ?, 'running', 0.4, 'training: epoch 2 of 3, step 5 of 46', 150)", (job, sid, time.time()))
    try:
        browser.refresh()
        state = wait_for(browser, lambda d: d.find_element(By.ID, "job-state").text)
        assert state.startswith("Retrain running: training: epoch 2 of 3, step 5 of 46 · about 3 minutes left"), state
        assert not browser.find_element(By.ID, "retrain").is_enabled()
        metrics = {"split": "test", "n": 10, "figures": [
            {"metric": "age_mae", "served": 5.0, "new": 4.9, "lower_is_better": True}]}
        with sqlite3.connect(server_tmp / "data" / "serve.sqlite3") as db:
            db.execute("UPDATE jobs SET state = 'done', progress = 1, phase = 'done', metrics = ? WHERE id = ?",
                       (json.dumps(metrics), job))
        wait_for(browser, lambda d: d.find_element(By.ID, "retrain").is_enabled(), 20)
        assert "age_mae (lower is better)" in browser.find_element(By.ID, "job-metrics").text
    finally:
        with sqlite3.connect(server_tmp / "data" / "serve.sqlite3") as db:
            db.execute("UPDATE jobs SET state = 'done' WHERE id = ?", (job,))


# --------------------------------------------------------------------- axe-core and phone width

def axe_problems(driver) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now: "rule: element"."""
    if not AXE.is_file():
        pytest.skip("needs axe-core from npm: run `npm ci` in the repository (package.json)")
    driver.execute_script(AXE.read_text())
    driver.set_script_timeout(60)
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']}).then((r) => done(r.violations), (e) => done(String(e)));")
    assert isinstance(result, list), result
    return [f"{v['id']} ({v['impact']}): {n['target']}" for v in result if v["impact"] in ("serious", "critical")
            for n in v["nodes"]]


def upload_astronaut(driver, server: str):
    from selenium.webdriver.common.by import By

    driver.get(server + "/")
    before = driver.execute_script("return location.hash")
    driver.find_element(By.ID, "file").send_keys(str(ASTRONAUT))
    wait_for(driver, lambda d: d.execute_script("return location.hash") != before)  # this upload's id
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#faces .face"))
    photo = driver.find_element(By.ID, "photo")
    wait_for(driver, lambda d: loaded(d, photo))


@pytest.mark.slow
def test_axe_core_finds_no_serious_or_critical_problem(server, browser):
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(server + "/")
    problems = {"/": axe_problems(browser)}
    upload_astronaut(browser, server)
    problems["/ after an upload"] = axe_problems(browser)
    for page in ("/runs", "/runs/view/statistics/cnn", "/runs/compare?run=statistics/cnn&run=statistics/facenet",
                 "/nowhere"):
        browser.get(server + page)
        wait_for(browser, lambda d: d.find_elements(By.TAG_NAME, "h1"))
        problems[page] = axe_problems(browser)
    assert problems == {page: [] for page in problems}
    browser.execute_script("document.querySelector('main').append(document.createElement('img'))")
    assert any(p.startswith("image-alt (critical)") for p in axe_problems(browser))  # the check can fail


@pytest.fixture
def phone(browser):
    """The browser at a phone's width (390 x 844 CSS pixels, touch), reset afterwards."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": PHONE_WIDTH, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    yield browser
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


SMALL_CONTROLS = """
return Array.from(document.querySelectorAll('input:not(.visually-hidden), select, button, .button, .actions a'))
  .filter((el) => el.offsetParent !== null && !el.closest('[hidden]'))
  .map((el) => [el.outerHTML.slice(0, 80), el.getBoundingClientRect().height])
  .filter(([_, h]) => h < arguments[0]);"""


@pytest.mark.slow
def test_at_a_phones_width_nothing_scrolls_sideways_and_controls_fit_a_finger(server, phone):
    from selenium.webdriver.common.by import By

    widths, small = {}, {}
    upload_astronaut(phone, server)
    faces = phone.find_element(By.ID, "faces")
    photo = phone.find_element(By.ID, "photo")
    assert faces.rect["y"] >= photo.rect["y"] + photo.rect["height"] - 1  # the face list under the photo
    assert "Face 1" in faces.text and "model: " in faces.text
    assert not faces.find_element(By.CLASS_NAME, "clear").is_displayed()  # no correction to clear
    widths["/ after an upload"] = phone.execute_script("return document.documentElement.scrollWidth")
    small["/ after an upload"] = phone.execute_script(SMALL_CONTROLS, FINGER_PX)
    if os.environ.get("SAVE_SCREENSHOT") == "1":  # the whole page, as long as it is, for docs/serve.md
        import base64

        time.sleep(0.5)
        height = phone.execute_script("return document.documentElement.scrollHeight")
        shot = phone.execute_cdp_cmd("Page.captureScreenshot", {
            "captureBeyondViewport": True, "clip": {"x": 0, "y": 0, "width": PHONE_WIDTH, "height": height,
                                                    "scale": 0.6}})
        PHONE_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        PHONE_SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))
    for page in ("/runs", "/runs/view/statistics/cnn"):
        phone.get(server + page)
        wait_for(phone, lambda d: d.find_elements(By.TAG_NAME, "h1"))
        widths[page] = phone.execute_script("return document.documentElement.scrollWidth")
        small[page] = phone.execute_script(SMALL_CONTROLS, FINGER_PX)
    assert widths == {page: PHONE_WIDTH for page in widths}
    assert small == {page: [] for page in small}
