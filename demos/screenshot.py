"""Screenshots taken with headless Chromium (Selenium): the web UI after one generation (``docs/images/ui.png``), or
an ``attnplug report`` page (``--report DIR/report.html``, ``docs/images/report.png``).

``python demos/screenshot.py [--out docs/images/ui.png]`` launches :mod:`attnplug.ui` on a free localhost port, types a
prompt, clicks Generate, waits for the result and saves the page. Needs Debian's ``chromium`` + ``chromium-driver``.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _app():
    import attnplug.ui

    return attnplug.ui


def chromium(width: int = 1400, height: int = 1000):
    """A headless Debian Chromium driven by Selenium, with its background network services off."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        raise SystemExit("needs chromium and chromedriver: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--hide-scrollbars", f"--window-size={width},{height}",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='attnplug-chromium-')}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def report_screenshot(report_html: Path, out: Path, width: int = 1400, height: int = 1800) -> Path:
    """A screenshot of an ``attnplug report`` page (``report.html``, self-contained) in headless Chromium."""
    browser = chromium(width, height)
    try:
        browser.get(report_html.resolve().as_uri())
        browser.execute_script("document.querySelectorAll('video').forEach(v => v.pause())")
        out.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(out))
    finally:
        browser.quit()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="default: docs/images/ui.png (or report.png)")
    parser.add_argument("--prompt", default="blue square")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--report", type=Path, help="screenshot this report.html instead of the UI")
    args = parser.parse_args(argv)
    if args.report is not None:
        print(report_screenshot(args.report, args.out or HERE.parent / "docs" / "images" / "report.png"))
        return
    args.out = args.out or HERE.parent / "docs" / "images" / "ui.png"

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    app = _app()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = app.build_app()
    _, url, _ = app.serve(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    browser = chromium()
    try:
        wait = WebDriverWait(browser, 180)
        browser.get(url)
        prompt = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#prompt textarea")))
        prompt.clear()
        prompt.send_keys(args.prompt)
        for elem_id in ("height", "width"):
            box = browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
            box.clear()
            box.send_keys(str(args.size))
        browser.find_element(By.CSS_SELECTOR, "#generate").click()
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#summary"), "speed-up vs dense"))
        browser.execute_script("window.scrollTo(0, 0)")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(args.out))
        print(args.out)
    finally:
        browser.quit()
        demo.close()


if __name__ == "__main__":
    main()
