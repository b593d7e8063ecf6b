"""Routes of the rep pages (see ``serving.ui``)."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from serving.ui import charts
from serving.ui.queries import (
    PAGE_SIZES,
    SORT_KEYS,
    AccountFilter,
    account_page,
    latest_run,
    rep_loads,
    tier_figures,
)
from serving.ui.session import LOGIN_CSRF_COOKIE, SESSION_COOKIE, SESSION_SECONDS, Session, Signer

if TYPE_CHECKING:
    from serving.history import HistoryStore
    from serving.online import OnlineScorer
    from tiering.config import Config

logger = logging.getLogger("tiering.ui")
HERE = Path(__file__).resolve().parent

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
templates = Jinja2Templates(directory=HERE / "templates")


@dataclass
class UiContext:
    scorer: OnlineScorer
    history: HistoryStore | None
    signer: Signer
    config: Config | None = None
    cache: dict[str, Any] = field(default_factory=dict)


_context: UiContext | None = None


def bind(
    scorer: OnlineScorer,
    history: HistoryStore | None,
    api_key: str | None,
    config_path: Path | None = None,
) -> UiContext:
    """Give the pages the service's scorer and history store (called once per worker)."""
    global _context
    config = None
    if config_path is not None:
        from tiering.config import load_config

        config = load_config(config_path)
    _context = UiContext(scorer=scorer, history=history, signer=Signer(api_key), config=config)
    return _context


class NeedsSignIn(Exception):
    pass


class Unavailable(Exception):
    pass


@app.exception_handler(NeedsSignIn)
async def _to_login(request: Request, exc: NeedsSignIn) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{_base(request)}/login?{urlencode({'next': target})}", 303)


@app.exception_handler(Unavailable)
async def _unavailable(request: Request, exc: Unavailable) -> Response:
    return _page(request, "message.html", {"title": "Not available", "message": str(exc)}, 503)


@app.middleware("http")
async def _headers(request: Request, call_next: Any) -> Response:
    response: Response = await call_next(request)
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'"
    )
    return response


# ------------------------------------------------------------------------- helpers
def _ctx() -> UiContext:
    if _context is None:
        raise Unavailable("The rep pages start with the service; it is not running yet.")
    return _context


def _store(ctx: UiContext) -> HistoryStore:
    if ctx.history is None:
        raise Unavailable(
            "No tier history is configured: set TIERING_HISTORY_URL or TIERING_CONFIG and run "
            "`tiering score`."
        )
    return ctx.history


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _session(request: Request) -> Session:
    session = _ctx().signer.read_session(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise NeedsSignIn()
    return session


def _page(
    request: Request, template: str, values: dict[str, Any], status: int = 200
) -> HTMLResponse:
    session = None
    csrf = ""
    if _context is not None:
        session = _context.signer.read_session(request.cookies.get(SESSION_COOKIE))
        csrf = _context.signer.csrf_for(session) if session else ""
    return templates.TemplateResponse(
        request,
        template,
        {"base": _base(request), "session": session, "csrf": csrf, **values},
        status_code=status,
    )


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def money(value: Any) -> str:
    if value is None:
        return "—"
    v = float(value)
    if v != v:
        return "—"
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= limit:
            return f"${v / limit:,.1f}{suffix}"
    return f"${v:,.0f}"


def pct(value: Any, digits: int = 1) -> str:
    if value is None or float(value) != float(value):
        return "—"
    return f"{100 * float(value):.{digits}f} %"


templates.env.filters["money"] = money
templates.env.filters["pct"] = pct


def _csrf_refused(request: Request) -> HTMLResponse:
    return _page(
        request,
        "message.html",
        {
            "title": "Form refused",
            "message": "This form was not sent from this page (its security token is missing "
            "or stale). Reload the page and send it again.",
        },
        403,
    )


# ------------------------------------------------------------------------- sign-in
@app.get("/", include_in_schema=False)
def home(request: Request) -> Response:
    _session(request)
    return RedirectResponse(f"{_base(request)}/accounts", 303)


@app.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "") -> Response:
    token = Signer.new_login_token()
    response = _page(request, "login.html", {"login_csrf": token, "next": next, "error": ""})
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        max_age=1800,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path=_base(request) or "/",
    )
    return response


@app.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    api_key: str = Form(""),
    name: str = Form(""),
    csrf: str = Form(""),
    next: str = Form(""),
) -> Response:
    ctx = _ctx()
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    import hmac

    if not csrf or not expected or not hmac.compare_digest(csrf, expected):
        return _csrf_refused(request)
    if not ctx.signer.key_matches(api_key):
        token = Signer.new_login_token()
        refused = _page(
            request,
            "login.html",
            {"login_csrf": token, "next": next, "error": "That key is not this service's API key."},
            401,
        )
        refused.set_cookie(
            LOGIN_CSRF_COOKIE, token, max_age=1800, httponly=True, samesite="strict",
            secure=_secure(request), path=_base(request) or "/",
        )  # fmt: skip
        return refused
    user = name.strip()[:200] or "rep"
    base = _base(request)
    target = next if next.startswith(f"{base}/") and "//" not in next else f"{base}/accounts"
    response = RedirectResponse(target, 303)
    response.set_cookie(
        SESSION_COOKIE,
        ctx.signer.new_session(user),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path=base or "/",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=base or "/")
    return response


@app.post("/logout")
def logout(request: Request, csrf: str = Form("")) -> Response:
    session = _session(request)
    if not _ctx().signer.csrf_ok(session, csrf):
        return _csrf_refused(request)
    response = RedirectResponse(f"{_base(request)}/login", 303)
    response.delete_cookie(SESSION_COOKIE, path=_base(request) or "/")
    return response


# ------------------------------------------------------------------------- my accounts
@app.get("/accounts", response_class=HTMLResponse)
def accounts(
    request: Request,
    owner: str | None = None,
    territory: str = "",
    tier: str = "",
    q: str = "",
    sort: str = "tier",
    dir: str = "asc",
    page: int = 1,
    size: int = 50,
) -> Response:
    session = _session(request)
    store = _store(_ctx())
    wanted_sort = sort if sort in SORT_KEYS else "tier"
    # No owner chosen yet: the signed-in rep's own accounts when they own any.
    chosen_owner = owner
    if owner is None:
        probe = account_page(store, AccountFilter(owner=session.user, page_size=PAGE_SIZES[0]))
        chosen_owner = session.user if probe.total else ""
    wanted = AccountFilter(
        owner=chosen_owner or None,
        territory=territory or None,
        tier=int(tier) if tier in ("1", "2", "3") else None,
        search=q.strip() or None,
        sort=wanted_sort,
        descending=dir == "desc",
        page=page,
        page_size=size,
    )
    result = account_page(store, wanted)
    params = {
        "owner": chosen_owner or "",
        "territory": territory,
        "tier": tier,
        "q": q,
        "sort": wanted_sort,
        "dir": "desc" if wanted.descending else "asc",
        "size": size if size in PAGE_SIZES else PAGE_SIZES[1],
    }

    def link(**changes: Any) -> str:
        return f"{_base(request)}/accounts?{urlencode({**params, **changes})}"

    def sort_link(key: str) -> str:
        flip = "asc" if (params["sort"] == key and params["dir"] == "desc") else "desc"
        if params["sort"] != key:
            flip = "asc" if key in ("tier", "account") else "desc"
        return link(sort=key, dir=flip, page=1)

    return _page(
        request,
        "accounts.html",
        {
            "result": result,
            "params": params,
            "link": link,
            "sort_link": sort_link,
            "page_sizes": PAGE_SIZES,
        },
    )


# ------------------------------------------------------------------------- account page
def _overrides() -> Any | None:
    try:
        import serving.overrides as overrides
    except ImportError:
        return None
    return overrides


def _account_values(request: Request, account_id: str) -> dict[str, Any]:
    from serving.account_history import account_timeline
    from serving.request_features import RequestRejected
    from serving.schemas import AccountRequest

    ctx = _ctx()
    store = ctx.history
    try:
        explained = ctx.scorer.explain(AccountRequest(account_id=account_id))
    except RequestRejected as exc:
        return {"missing": str(exc)}
    account = explained.account
    drivers = sorted(explained.drivers, key=lambda d: abs(d.effect_points), reverse=True)[:10]
    chart = charts.signed_bars(
        [
            charts.Bar(label=d.label, value=d.effect_points, note=d.text)
            for d in drivers
            if abs(d.effect_points) >= 0.05
        ],
        title="What moves the chance to buy, in percentage points",
    )
    timeline = account_timeline(store, account_id) if store is not None else None
    entries = list(reversed(timeline.entries)) if timeline is not None else []
    overrides = _overrides()
    active = None
    if overrides is not None and store is not None:
        active = overrides.active_override(store, account_id)
    cut = explained.cutoffs
    needed = {1: cut.tier1_min_priority, 2: cut.tier2_min_priority}.get(account.tier - 1)
    return {
        "account_id": account_id,
        "explained": explained,
        "account": account,
        "reasons": account.reasons,
        "chart": chart,
        "drivers": drivers,
        "entries": entries,
        "latest": entries[0] if entries else None,
        "overrides_available": overrides is not None and store is not None,
        "active_override": active,
        "next_cutoff": needed,
        "today": dt.date.today().isoformat(),
        "override_error": None,
        "override_field": None,
        "form": {},
    }


@app.get("/accounts/{account_id}", response_class=HTMLResponse)
def account(request: Request, account_id: str, saved: str = "") -> Response:
    _session(request)
    values = _account_values(request, account_id)
    if "missing" in values:
        return _page(
            request,
            "message.html",
            {"title": "Account not found", "message": values["missing"]},
            404,
        )
    values["saved"] = saved
    return _page(request, "account.html", values)


@app.post("/accounts/{account_id}/override", response_class=HTMLResponse)
def set_override(
    request: Request,
    account_id: str,
    csrf: str = Form(""),
    tier: str = Form(""),
    reason: str = Form(""),
    until: str = Form(""),
    action: str = Form("set"),
) -> Response:
    session = _session(request)
    ctx = _ctx()
    if not ctx.signer.csrf_ok(session, csrf):
        return _csrf_refused(request)
    overrides = _overrides()
    store = _store(ctx)
    if overrides is None:
        return _page(
            request,
            "message.html",
            {"title": "Overrides are not installed", "message": "This service has no overrides."},
            404,
        )
    try:
        if action == "clear":
            overrides.clear_override(store, account_id, by=session.user)
        else:
            try:
                tier_number = int(tier)
            except ValueError:
                raise overrides.OverrideError("tier: choose Tier 1, 2 or 3") from None
            try:
                until_date = dt.date.fromisoformat(until) if until.strip() else None
            except ValueError:
                raise overrides.OverrideError(
                    f"until: {until!r} is not a date (YYYY-MM-DD)"
                ) from None
            overrides.set_override(
                store,
                account_id,
                tier=tier_number,
                reason=reason,
                by=session.user,
                until=until_date,
            )
    except overrides.OverrideError as exc:
        values = _account_values(request, account_id)
        if "missing" in values:
            return _page(request, "message.html", {"title": "Account not found", "message": values["missing"]}, 404)  # fmt: skip
        values.update(
            override_error=str(exc),
            override_field=getattr(exc, "field", None),
            form={"tier": tier, "reason": reason, "until": until},
            saved="",
        )
        return _page(request, "account.html", values, 422)
    return RedirectResponse(f"{_base(request)}/accounts/{account_id}?saved=1", 303)


# ------------------------------------------------------------------------- manager view
@app.get("/manager", response_class=HTMLResponse)
def manager(request: Request) -> Response:
    from serving.reports import ReportError, movement

    _session(request)
    ctx = _ctx()
    store = _store(ctx)
    run = latest_run(store)
    policy = ctx.scorer.bundle.policy
    loads = rep_loads(store, run.run_id) if run is not None else []
    busiest = sorted(loads, key=lambda r: (-r.tier1, r.owner))[:15]
    capacity_chart = charts.stacked_tiers(
        [(r.owner, {1: r.tier1}) for r in busiest],
        title=f"Tier 1 accounts of the {len(busiest)} busiest reps; dashed: one rep's capacity",
        capacity={1: policy.tier1_per_rep},
        tiers=(1,),
    )
    figures = tier_figures(store)
    by_run: dict[str, dict[int, float]] = {}
    for f in figures:
        by_run.setdefault(f.as_of.isoformat(), {})[f.tier] = f.expected_revenue
    revenue_chart = charts.stacked_tiers(
        list(by_run.items()), title="Expected revenue per run, by tier", unit=""
    )
    try:
        moved = movement(store)
        move_error = ""
    except ReportError as exc:
        moved, move_error = None, str(exc)
    realised, realised_note = _realised(ctx, store)
    return _page(
        request,
        "manager.html",
        {
            "run": run,
            "loads": loads,
            "policy": policy,
            "capacity_chart": capacity_chart,
            "revenue_chart": revenue_chart,
            "figures": figures,
            "moved": moved,
            "move_error": move_error,
            "realised": realised,
            "realised_note": realised_note,
        },
    )


def _realised(ctx: UiContext, store: HistoryStore) -> tuple[list[dict[str, Any]], str]:
    """Per-tier outcomes after each run (serving.reports.performance), when the service knows
    where the CRM export is (TIERING_CONFIG)."""
    if ctx.config is None:
        return [], (
            "Realised outcomes per tier need the CRM export: start the service with "
            "TIERING_CONFIG, or run `tiering report performance`."
        )
    from features.contract import load_tables
    from serving.reports import ReportError, performance

    try:
        tables = load_tables(ctx.config.data).tables
        perf = performance(
            store,
            tables.opportunities,
            horizon_days=ctx.config.training.horizon_days,
            end_of_data=tables.end_of_data(),
        )
    except (ReportError, ValueError, OSError) as exc:
        return [], f"Realised outcomes are not available: {exc}"
    matured = perf[perf["matured"]]
    if matured.empty:
        return [], "No run is old enough yet for its outcomes to be known."
    latest = matured[matured["as_of"] == matured["as_of"].max()]
    return latest.to_dict("records"), ""
