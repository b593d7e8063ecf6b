"""Screenshots of the rep pages from a running service, in headless Chromium:

    python -m serving.ui.screenshots docs/ --url http://127.0.0.1:3000 --key "$TIERING_API_KEY"

writes ``rep-page-accounts.png`` (the account list) and ``rep-page-account.png`` (the account with the highest
expected revenue on the list). Uses the system's Chromium and chromedriver (Debian:
``chromium``, ``chromium-driver``); nothing is downloaded. Needs the dev extra (selenium).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def headless_chromium(width: int = 1280, height: int = 900) -> Any:
    """A headless Chromium driven through the system's chromedriver (never Selenium
    Manager: nothing is fetched)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or CHROMIUM
    driver = shutil.which("chromedriver") or CHROMEDRIVER
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def sign_in(browser: Any, base_url: str, api_key: str, name: str = "") -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{base_url}/ui/login")
    browser.find_element(By.ID, "name").send_keys(name)
    browser.find_element(By.ID, "api_key").send_keys(api_key)
    navigate(browser, browser.find_element(By.ID, "sign-in"))


def navigate(browser: Any, element: Any) -> None:
    """Click what loads a new page, and wait until the old page is gone."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = browser.find_element(By.TAG_NAME, "html")
    element.click()

    def old_page_gone(driver: Any) -> bool:
        try:
            return bool(expected_conditions.staleness_of(old)(driver))
        except WebDriverException:
            # Chromium may report the old page's node as "not in the document" instead of
            # stale while the new page replaces it: gone all the same.
            return True

    WebDriverWait(browser, 15).until(old_page_gone)


def full_page(browser: Any, path: Path, width: int = 1280) -> Path:
    """The whole page, not just the window."""
    height = int(browser.execute_script("return document.documentElement.scrollHeight"))
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {
            "width": width,
            "height": max(600, min(height, 4000)),
            "deviceScaleFactor": 1,
            "mobile": False,
        },
    )
    browser.save_screenshot(str(path))
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return path


def take(out: Path, base_url: str, api_key: str, owner: str = "") -> list[Path]:
    from selenium.webdriver.common.by import By

    out.mkdir(parents=True, exist_ok=True)
    browser = headless_chromium()
    try:
        sign_in(browser, base_url, api_key, owner)
        browser.get(f"{base_url}/ui/accounts?owner={owner}&sort=expected_revenue&dir=desc&size=25")
        shots = [full_page(browser, out / "rep-page-accounts.png")]
        browser.get(browser.find_element(By.CSS_SELECTOR, "a.account-link").get_attribute("href"))
        shots.append(full_page(browser, out / "rep-page-account.png"))
        return shots
    finally:
        browser.quit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "out", type=Path, help="folder for rep-page-accounts.png and rep-page-account.png"
    )
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the running service")
    parser.add_argument("--key", required=True, help="the service's API key")
    parser.add_argument("--owner", default="", help="sign in as this account owner")
    args = parser.parse_args(argv)
    try:
        shots = take(args.out, args.url.rstrip("/"), args.key, args.owner)
    except ImportError:
        print("error: selenium is not installed: install the dev extra", file=sys.stderr)
        return 2
    for shot in shots:
        print(shot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
