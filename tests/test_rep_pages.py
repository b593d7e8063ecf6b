"""The rep pages in a real headless Chromium (Debian's, through its chromedriver) against a real
`bentoml serve`: no page without a session, sign-in, my accounts filtered, sorted and paged,
an account's reasons, the manager view, and forms refused without their CSRF token."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.ui.screenshots import navigate

from support import LiveService

pytestmark = pytest.mark.skipif(
    not (shutil.which("chromium") or Path("/usr/bin/chromium").exists())
    or not (shutil.which("chromedriver") or Path("/usr/bin/chromedriver").exists()),
    reason="needs Chromium and chromedriver (Debian: chromium, chromium-driver)",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from serving.ui.screenshots import headless_chromium

    driver = headless_chromium()
    driver.implicitly_wait(2)
    try:
        yield driver
    finally:
        driver.quit()


def _owner_with_most_accounts(live: LiveService) -> str:
    from serving.history import HistoryStore

    rows = HistoryStore(live.deployment.history_url).rows(columns=["owner"])
    return str(rows["owner"].value_counts().index[0])


def _sign_in(browser: Any, live: LiveService, name: str = "") -> None:
    from serving.ui.screenshots import sign_in

    browser.delete_all_cookies()
    sign_in(browser, live.base_url, live.api_key, name)


def _not_blank(path: Path) -> None:
    from PIL import Image, ImageStat

    image = Image.open(path).convert("L")
    assert image.size[0] >= 800 and image.size[1] >= 500
    assert ImageStat.Stat(image).var[0] > 100, f"{path.name} looks blank"


def _texts(browser: Any, selector: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in browser.find_elements(By.CSS_SELECTOR, selector)]


# ------------------------------------------------------------------------------ sessions
def test_no_page_is_shown_without_a_session(live_server: LiveService) -> None:
    base = live_server.base_url
    for path in (
        "/ui/accounts",
        "/ui/manager",
        f"/ui/accounts/{live_server.deployment.account_ids[0]}",
    ):
        response = httpx.get(f"{base}{path}", follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/ui/login?next=")
    forged = httpx.get(
        f"{base}/ui/accounts", cookies={"tiering_session": "e30.deadbeef"}, follow_redirects=False
    )
    assert forged.status_code == 303


def test_sign_in_sets_an_httponly_samesite_cookie_and_refuses_a_wrong_key(
    live_server: LiveService,
) -> None:
    with httpx.Client(base_url=live_server.base_url) as http:
        form = http.get("/ui/login")
        token = form.cookies["tiering_login_csrf"]
        wrong = http.post("/ui/login", data={"api_key": "nope", "csrf": token})
        assert wrong.status_code == 401 and "not this service" in wrong.text
        token = wrong.cookies.get("tiering_login_csrf") or http.cookies["tiering_login_csrf"]
        ok = http.post("/ui/login", data={"api_key": live_server.api_key, "csrf": token})
        assert ok.status_code == 303
        cookie = ok.headers["set-cookie"].lower()
        assert "tiering_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        assert http.get("/ui/accounts").status_code == 200


def test_sign_in_without_its_csrf_token_is_refused(live_server: LiveService) -> None:
    with httpx.Client(base_url=live_server.base_url) as http:
        http.get("/ui/login")
        refused = http.post("/ui/login", data={"api_key": live_server.api_key, "csrf": ""})
        assert refused.status_code == 403 and "Form refused" in refused.text
        assert "tiering_session" not in refused.headers.get("set-cookie", "")


# ------------------------------------------------------------------------------ my accounts
def test_my_accounts_filter_sort_and_page_in_the_browser(
    browser: Any, live_server: LiveService, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    owner = _owner_with_most_accounts(live_server)
    _sign_in(browser, live_server, owner)
    assert browser.current_url.endswith("/ui/accounts")
    assert owner in browser.find_element(By.TAG_NAME, "h1").text
    owners = _texts(browser, "#accounts tbody tr td:last-child")
    assert owners and set(owners) == {owner}

    Select(browser.find_element(By.ID, "owner")).select_by_value("")
    Select(browser.find_element(By.ID, "tier")).select_by_value("1")
    navigate(browser, browser.find_element(By.ID, "apply"))
    tiers = _texts(browser, "#accounts tbody .tier")
    assert tiers and set(tiers) == {"Tier 1"}

    browser.get(f"{live_server.base_url}/ui/accounts?owner=&size=25")
    navigate(browser, browser.find_element(By.LINK_TEXT, "EXPECTED REVENUE"))
    values = [_money(t) for t in _texts(browser, "#accounts tbody td.num:nth-of-type(3)")]
    assert len(values) == 25 and values == sorted(values, reverse=True)
    assert "Page 1 of 12" in browser.find_element(By.CSS_SELECTOR, ".pager").text
    first_page = _texts(browser, "a.account-link")
    navigate(browser, browser.find_element(By.ID, "next"))
    second_page = _texts(browser, "a.account-link")
    assert len(second_page) == 25 and not set(first_page) & set(second_page)
    assert max(_money(t) for t in _texts(browser, "#accounts tbody td.num:nth-of-type(3)")) <= min(
        values
    )

    browser.find_element(By.ID, "q").send_keys(first_page[0])
    navigate(browser, browser.find_element(By.ID, "apply"))
    assert _texts(browser, "a.account-link") == [first_page[0]]

    shot = tmp_path / "accounts.png"
    browser.save_screenshot(str(shot))
    _not_blank(shot)


def _money(text: str) -> float:
    number = text.replace("$", "").replace(",", "")
    scale = {"k": 1e3, "M": 1e6, "B": 1e9}.get(number[-1:], 1.0)
    return float(number.rstrip("kMB")) * scale


# ------------------------------------------------------------------------------ account page
def test_an_account_page_says_why_in_a_reps_words(
    browser: Any, live_server: LiveService, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    _sign_in(browser, live_server)
    browser.get(f"{live_server.base_url}/ui/accounts?owner=&sort=expected_revenue&dir=desc")
    account_id = browser.find_element(By.CSS_SELECTOR, "a.account-link").text
    navigate(browser, browser.find_element(By.CSS_SELECTOR, "a.account-link"))
    assert browser.find_element(By.ID, "account-id").text == account_id
    tier = browser.find_element(By.ID, "tier").text
    assert tier in ("Tier 1", "Tier 2", "Tier 3")
    reasons = _texts(browser, "#positives li") + _texts(browser, "#negatives li")
    assert any(" pts" in r for r in reasons), reasons
    bars = browser.find_elements(By.CSS_SELECTOR, "#why svg rect")
    assert bars, "no driver chart"
    assert browser.find_element(By.ID, "tier-rule").text
    assert "Priority" in browser.find_element(By.ID, "cutoff").text
    assert browser.find_element(By.ID, "next-tier").text
    assert _texts(browser, "#icp li")
    assert _texts(browser, "#playbook li")
    history = _texts(browser, "#history tbody tr")
    assert len(history) == 2, history  # the two recorded runs
    shot = tmp_path / "account.png"
    browser.save_screenshot(str(shot))
    _not_blank(shot)

    browser.get(f"{live_server.base_url}/ui/accounts/NOPE-1")
    assert "Account not found" in browser.find_element(By.TAG_NAME, "h1").text


def test_a_customers_page_shows_its_customer_success_tier_and_why(
    browser: Any, live_server: LiveService
) -> None:
    from selenium.webdriver.common.by import By

    from serving.history import HistoryStore

    ids = HistoryStore(live_server.deployment.history_url).rows(columns=["account_id"])
    ids = list(dict.fromkeys(ids["account_id"].astype(str)))[:300]
    answer = httpx.post(
        f"{live_server.base_url}/score",
        json={"accounts": [{"account_id": i} for i in ids], "reasons": True},
        headers={"X-API-Key": live_server.api_key},
        timeout=60,
    ).json()
    customers = [a for a in answer["accounts"] if a["segment"] == "customer"]
    prospect = next(a for a in answer["accounts"] if a["segment"] == "prospect")
    assert customers, "the demo list has customers"
    customer = customers[0]

    _sign_in(browser, live_server)
    browser.get(f"{live_server.base_url}/ui/accounts/{customer['account_id']}")
    section = browser.find_element(By.ID, "customer").text
    assert "Customer success" in section
    tier = customer["customer"]["tier"]
    assert (f"Tier {tier}" in section) if tier else ("no tier" in section)
    assert _texts(browser, "#customer-reasons li") == customer["customer"]["reasons"]
    browser.get(f"{live_server.base_url}/ui/accounts/{prospect['account_id']}")
    assert not browser.find_elements(By.ID, "customer")


def test_the_manager_view_shows_capacity_movement_and_tiers(
    browser: Any, live_server: LiveService
) -> None:
    from selenium.webdriver.common.by import By

    _sign_in(browser, live_server)
    browser.get(f"{live_server.base_url}/ui/manager")
    reps = _texts(browser, "#capacity tbody tr")
    assert len(reps) > 1
    matrix = browser.find_element(By.CSS_SELECTOR, "#movement table.matrix")
    cells = [int(c.text) for c in matrix.find_elements(By.CSS_SELECTOR, "td")]
    assert sum(cells) == len(live_server.deployment.account_ids)
    assert browser.find_elements(By.CSS_SELECTOR, "#performance svg rect")


# ------------------------------------------------------------------------------ CSRF
def test_sign_out_needs_its_csrf_token(browser: Any, live_server: LiveService) -> None:
    from selenium.webdriver.common.by import By

    _sign_in(browser, live_server)
    browser.execute_script("document.querySelector('form.signout input[name=csrf]').value = ''")
    navigate(browser, browser.find_element(By.ID, "sign-out"))
    assert "Form refused" in browser.find_element(By.TAG_NAME, "h1").text
    browser.get(f"{live_server.base_url}/ui/accounts")
    assert browser.current_url.endswith("/ui/accounts")  # still signed in
    navigate(browser, browser.find_element(By.ID, "sign-out"))
    assert "/ui/login" in browser.current_url
    browser.get(f"{live_server.base_url}/ui/accounts")
    assert "/ui/login" in browser.current_url


def test_an_override_is_refused_without_csrf_and_saved_with_it(
    browser: Any, live_server: LiveService
) -> None:
    pytest.importorskip("serving.overrides")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    account_id = live_server.deployment.account_ids[5]
    _sign_in(browser, live_server, "Test Rep")
    page = f"{live_server.base_url}/ui/accounts/{account_id}"
    browser.get(page)
    browser.execute_script("document.querySelector('#override-form input[name=csrf]').value = ''")
    Select(browser.find_element(By.ID, "override-tier")).select_by_value("1")
    browser.find_element(By.ID, "override-reason").send_keys(
        "Board-level sponsor met at the summit"
    )
    navigate(browser, browser.find_element(By.ID, "override-submit"))
    assert "Form refused" in browser.find_element(By.TAG_NAME, "h1").text
    browser.get(page)
    assert not browser.find_elements(By.ID, "active-override")
    Select(browser.find_element(By.ID, "override-tier")).select_by_value("1")
    browser.find_element(By.ID, "override-reason").send_keys(
        "Board-level sponsor met at the summit"
    )
    navigate(browser, browser.find_element(By.ID, "override-submit"))
    assert browser.find_element(By.ID, "saved")
    banner = browser.find_element(By.ID, "active-override").text
    assert "Tier 1" in banner and "Board-level sponsor" in banner and "Test Rep" in banner
