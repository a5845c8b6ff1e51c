"""The web UI in a real browser: Debian's headless Chromium driven by Selenium against the app on localhost.

Types a prompt, clicks Generate, waits for the generated image and checks it loaded at the requested size; saves a
screenshot under ``test-artifacts/``. Skipped (with the reason) only where Chromium or its driver is not installed
(``apt-get install -y chromium chromium-driver``; ``.ci/run`` installs them).
"""

from __future__ import annotations

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no headless browser: install Debian's chromium and chromium-driver (apt-get install -y chromium "
           "chromium-driver) to run the real-browser UI test",
)

TIMEOUT = 90  # seconds for the page and the generation, on a loaded 2-core machine


@pytest.fixture(scope="module")
def browser(screenshot_module):
    pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
    driver = screenshot_module.chromium(1400, 1100)
    yield driver
    driver.quit()


def test_generate_in_the_browser(browser, server, artifacts_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, TIMEOUT)
    browser.get(server[1])
    prompt = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#prompt textarea")))
    prompt.clear()
    prompt.send_keys("blue square")
    for elem_id, value in (("height", "24"), ("width", "32"), ("steps", "4")):
        box = browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
        box.clear()
        box.send_keys(value)
    browser.find_element(By.CSS_SELECTOR, "#generate").click()

    def loaded_image(driver):
        for img in driver.find_elements(By.CSS_SELECTOR, "#out-image img"):
            if driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img):
                return img
        return False

    image = wait.until(loaded_image)
    natural = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
    assert natural == [32, 24]
    summary = wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#summary"), "speed-up vs dense"))
    assert summary
    text = browser.find_element(By.CSS_SELECTOR, "#summary").text
    assert "agent" in text and "shapes-unet" in text and "32x24, 4 steps" in text and "object(s)" in text
    browser.save_screenshot(str(artifacts_dir / "ui-browser.png"))
    assert (artifacts_dir / "ui-browser.png").stat().st_size > 10_000


def test_mp4_plays_in_the_browser(browser, server, app_module, artifacts_dir):
    """The MP4 the app writes (H.264, yuv420p) decodes in Chromium: its frames load at the encoded size."""
    import numpy as np

    frames = np.random.default_rng(0).random((4, 16, 16, 3), dtype=np.float32)
    path = app_module.save_video(frames, artifacts_dir, "ui-browser-video")
    browser.get(server[1])
    script = """
        const done = arguments[arguments.length - 1];
        const v = document.createElement('video');
        v.muted = true;
        v.onloadeddata = () => done([v.videoWidth, v.videoHeight, v.readyState]);
        v.onerror = () => done(['error', v.error && v.error.code]);
        v.src = arguments[0];
        document.body.appendChild(v);
    """
    browser.set_script_timeout(TIMEOUT)
    width, height, ready = browser.execute_async_script(script, f"{server[1]}gradio_api/file={path}")
    assert (width, height) == (256, 256) and ready >= 2
