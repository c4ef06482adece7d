"""Headless Chromium for the report tests (Debian's chromium + chromedriver, driven by Selenium).

The driver path is given explicitly, so Selenium Manager never tries to download anything.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
         # plotly's parallel coordinates draw with WebGL: allow the software renderer explicitly
         # (the implicit fallback logs a deprecation warning).
         "--enable-unsafe-swiftshader")


def missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} not installed (apt-get install chromium chromium-driver; CI installs it)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed (pip install -e '.[dev]')"
    return None


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium WebDriver collecting the browser console; quit and cleaned up after."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver: Any) -> list[str]:
    """Console messages at error level (SEVERE) since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def is_blank(png: bytes) -> bool:
    """True when a screenshot is one flat colour (nothing rendered)."""
    import io

    from PIL import Image, ImageStat

    img = Image.open(io.BytesIO(png)).convert("L")
    return max(ImageStat.Stat(img).stddev) < 2.0 or len(img.getcolors(maxcolors=1 << 16) or [0] * 99) < 8
