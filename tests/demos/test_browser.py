"""The web UI in a real browser: Debian's headless Chromium driven by Selenium against the app on localhost.

Types a prompt, clicks Generate, waits for the generated image and checks it loaded at the requested size; saves a
screenshot under ``test-artifacts/``. Switches to the video model and checks the generated MP4 plays. Skipped (with
the reason) only where Chromium or its driver is not installed
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


def test_video_plays_in_the_browser(browser, server):
    """Choosing the video model switches the page to video; the MP4 it generates (H.264, yuv420p) decodes in
    Chromium at the encoded size."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, TIMEOUT)
    browser.get(server[1])
    model = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#model input")))
    model.click()
    model.send_keys(Keys.CONTROL, "a")
    model.send_keys("shapes-video")
    wait.until(ec.element_to_be_clickable((By.XPATH, "//*[@role='option'][contains(., 'shapes-video')]"))).click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#task input[value=video]").is_selected())
    prompt = browser.find_element(By.CSS_SELECTOR, "#prompt textarea").get_attribute("value")
    assert prompt == "blue square moving left"
    method = browser.find_element(By.CSS_SELECTOR, "#method input").get_attribute("value")
    assert method.startswith("sparse_video"), method  # the video task's default, never agent
    for elem_id, value in (("frames", "4"), ("steps", "2")):
        box = browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
        box.clear()
        box.send_keys(value)
    browser.find_element(By.CSS_SELECTOR, "#compare input").click()  # method only
    browser.find_element(By.CSS_SELECTOR, "#generate").click()

    def playable(driver):
        for video in driver.find_elements(By.CSS_SELECTOR, "#out-video video"):
            size = driver.execute_script(
                "const v = arguments[0]; return v.readyState >= 2 ? [v.videoWidth, v.videoHeight] : null", video)
            if size:
                return size
        return False

    assert wait.until(playable) == [256, 256]  # 16 x 16 frames enlarged 16x for display
    assert not any(e.is_displayed() for e in browser.find_elements(By.CSS_SELECTOR, "#out-image"))
