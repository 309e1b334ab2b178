"""Headless Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium) for looking at the
site as a reader does: screenshots of pages, and the checks of the browser test."""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Iterator

from ..errors import MissingResource

WINDOW = (1400, 900)  # a laptop screen: what a reader sees before scrolling
DRIVER_NAMES = ("chromedriver", "chromium-driver")
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome")


def missing() -> str:
    """What this machine lacks for a headless browser, in one line; empty when it has one."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    if not any(shutil.which(n) for n in BROWSER_NAMES):
        return "no Chromium on PATH (Debian: apt-get install chromium chromium-driver)"
    if not any(shutil.which(n) for n in DRIVER_NAMES):
        return "no chromedriver on PATH (Debian: apt-get install chromium-driver)"
    return ""


@contextlib.contextmanager
def chromium(width: int = WINDOW[0], height: int = WINDOW[1]) -> Iterator["object"]:
    """A headless Chromium WebDriver whose pages see a viewport of the given size; the local driver, never a
    downloaded one."""
    lacking = missing()
    if lacking:
        raise MissingResource(f"headless browser: {lacking}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                     f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    browser = next(shutil.which(n) for n in BROWSER_NAMES if shutil.which(n))
    options.binary_location = browser
    driver_path = next(shutil.which(n) for n in DRIVER_NAMES if shutil.which(n))
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    # The page's viewport is the screen asked for (a window's size would include the browser's own bars).
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                                   "mobile": False})
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver, page: Path, out: Path) -> Path:
    """What a reader sees of `page` before scrolling, as a PNG."""
    driver.get(page.resolve().as_uri())
    out.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(out))
    return out


def write_screenshots(site_dir: Path, pages: list[str]) -> list[Path]:
    """`site_dir/screenshots/<page>.png` for each page name (e.g. index, ablations)."""
    paths = []
    with chromium() as driver:
        for name in pages:
            page = site_dir / f"{name}.html"
            if not page.is_file():
                raise MissingResource(f"screenshot: {page} not found; pages: {', '.join(sorted(p.stem for p in site_dir.glob('*.html')))}")
            paths.append(screenshot(driver, page, site_dir / "screenshots" / f"{name}.png"))
    return paths


# Every reference of the open page, for the caller to check against the file system: `file PATH` for
# a local link, image, script or stylesheet; `no anchor #ID` for an in-page link without its target;
# `not loaded SRC` for an image the browser could not decode; `not local URL` for anything else.
REFERENCES_JS = """
const out = [];
const add = (raw) => {
  const url = new URL(raw, document.baseURI);
  if (url.protocol !== 'file:') { out.push('not local ' + url.href); return; }
  if (url.hash && url.pathname === location.pathname) {
    if (!document.getElementById(decodeURIComponent(url.hash.slice(1)))) out.push('no anchor ' + url.hash);
    return;
  }
  out.push('file ' + decodeURIComponent(url.pathname));
};
document.querySelectorAll('a[href]').forEach((a) => add(a.getAttribute('href')));
document.querySelectorAll('link[href]').forEach((l) => add(l.getAttribute('href')));
document.querySelectorAll('script[src]').forEach((s) => add(s.getAttribute('src')));
document.querySelectorAll('img').forEach((img) => {
  add(img.getAttribute('src'));
  if (!img.complete || img.naturalWidth === 0) out.push('not loaded ' + img.getAttribute('src'));
});
return out;
"""


def broken_references(driver) -> list[str]:
    """The references of the open page that do not resolve to an existing file (empty: all do)."""
    broken = []
    for item in driver.execute_script(REFERENCES_JS):
        if item.startswith("file "):
            if not Path(item[len("file "):]).is_file():
                broken.append(f"missing file {item[len('file '):]}")
        else:
            broken.append(item)
    return broken
