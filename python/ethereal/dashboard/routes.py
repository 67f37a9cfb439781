"""The operator's console under ``/dashboard``: server-rendered pages over the admin API.

Pages read the same store, pool and meter the admin JSON API uses, through the same
helpers (``key_json``, ``UpstreamService.list``, ``usage_totals``); every change a page
makes goes through the admin API itself (``/admin/api/...``) from the page's script, with
the session cookie and CSRF token (session.py) in place of the admin key. The
estimator (``/dashboard/estimate``, also ``/estimate``) needs no session and is rate
limited per client address.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
import orjson
from blacksheep import Application, Content, Request, Response, StreamedContent

from ethereal import connect, session
from ethereal.admin.keyspec import key_json
from ethereal.admin.usage import parse_time
from ethereal.auth import admin_attempts, admin_throttled
from ethereal.dashboard.estimator import Estimator, RateLimiter
from ethereal.errors import GatewayError
from ethereal.gateway import Gateway
from ethereal.guards import client_address
from ethereal.limits.plans import Plans
from ethereal.metering.aggregate import usage_totals
from ethereal.metering.reprice import correction_json
from ethereal.observability import live as live_ring
from ethereal.spend.periods import period_start
from ethereal.storage.base import UsageFilter
from ethereal.wire import read_body

log = logging.getLogger("ethereal.dashboard")

BASE = "/dashboard"
API = "/admin/api"
NAV = (
    ("", "Overview"),
    ("/keys", "Keys"),
    ("/limits", "Limits"),
    ("/upstreams", "Upstreams"),
    ("/usage", "Usage"),
    ("/estimate", "Estimator"),
)
ROUTES = ("messages", "count_tokens", "chat.completions", "models")
_FORM_MAX = 64 * 1024
_ESTIMATE_MAX = 4 * 1024 * 1024
_CSV_MAX_ROWS = 100_000
_FORMULA_START = frozenset("=+-@\t\r")
_STATIC_TYPES = {
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".txt": b"text/plain; charset=utf-8",
    ".LICENSE": b"text/plain; charset=utf-8",
}
# nothing from another host, no inline script; data for scripts travels in JSON blocks
_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
    b" frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
_SECURITY_HEADERS = [
    (b"content-security-policy", _CSP),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def _ts(value: float | None) -> str:
    if not value:
        return "—"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")


def csv_cell(value: Any) -> Any:
    """A text cell that starts like a formula (= + - @, tab, CR) gets a leading ' so no
    spreadsheet runs it: model names and error types can come from clients."""
    if isinstance(value, str) and value[:1] in _FORMULA_START:
        return "'" + value
    return value


def script_json(data: Any) -> str:
    """JSON safe inside a ``<script type="application/json">`` block (no ``</script>`` breakout)."""
    return orjson.dumps(data).decode().replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _usd(micro: int) -> str:
    """Cents once there are cents; below a cent, enough digits that a small spend is not shown as 0."""
    return f"{micro / 1_000_000:.2f}" if micro >= 10_000 or micro == 0 else f"{micro / 1_000_000:.6f}"


def _load_static() -> dict[str, tuple[bytes, bytes]]:
    root = resources.files("ethereal.dashboard") / "static"
    files: dict[str, tuple[bytes, bytes]] = {}

    def walk(folder: Any, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
                continue
            suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
            files[prefix + entry.name] = (
                _STATIC_TYPES.get(suffix, b"application/octet-stream"),
                entry.read_bytes(),
            )

    walk(root, "")
    return files


def _load_accuracy() -> dict[str, Any] | None:
    try:
        data = json.loads(
            (resources.files("ethereal.dashboard") / "accuracy.json").read_text(encoding="utf-8")
        )
    except (FileNotFoundError, ValueError):
        return None
    data.pop("rows", None)
    return data


def day_window(now: float) -> tuple[float, float]:
    """The 24 hour buckets ending with the current one: [start of the hour 23 h ago, end of this hour).

    Whole hours only, so PostgreSQL answers from the ``usage_hourly`` rollup alone (the trigger keeps
    the current hour's bucket up to date with every flush); no row can start after now, so ending
    the range at the end of this hour sums exactly what has happened so far.
    """
    hour = (int(now) // 3600) * 3600
    return float(hour - 23 * 3600), float(hour + 3600)


def live_view(ring: live_ring.Ring) -> dict[str, Any]:
    snap = live_ring.snapshot(ring)
    tokens = snap["tokens"]
    tokens["cache_write"] = tokens["cache_write_5m"] + tokens["cache_write_1h"]
    snap["tokens_total"] = tokens["input"] + tokens["output"] + tokens["cache_read"] + tokens["cache_write"]
    snap["cost_usd"] = f"{snap['cost_micro'] / 1_000_000:.4f}"
    return snap


def register(app: Application, gw: Gateway) -> None:
    settings = gw.settings
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("ethereal.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.ChainableUndefined,
    )
    env.filters["ms"] = _ms
    env.filters["ts"] = _ts
    static = _load_static()
    accuracy = _load_accuracy()
    estimator = Estimator(gw.registry)
    registry = gw.registry

    def model_choices() -> list[dict[str, Any]]:
        """What a key's allowed models may name, from the registry: today's models (not retired),
        their series and families, and the short names."""
        listed = registry.listed()
        out: list[dict[str, Any]] = [
            {
                "value": m.id,
                "label": f"{m.display_name} ({m.status})" + (" — provisional" if m.provisional else ""),
            }
            for m in listed
        ]
        seen = {c["value"] for c in out}
        for m in listed:
            for value, label in ((m.series, "series"), (m.family, "family")):
                if value and value not in seen:
                    seen.add(value)
                    out.append({"value": value, "label": label})
        return out

    def model_info(name: str | None) -> dict[str, Any]:
        """A usage record's model as the console shows it: the display name and whether the
        registry describes it (else it was billed at a provisional card)."""
        found = registry.get(name) if name else None
        if found is None and name:
            found = registry.resolve(name)
        if found is None:
            return {"display_name": name, "provisional": bool(name), "known": False}
        return {
            "display_name": found.display_name,
            "provisional": found.provisional,
            "known": True,
            "status": found.status,
        }

    env.globals["model_info"] = model_info
    limiter = RateLimiter(settings.estimator_rpm, 60.0)

    def plans() -> Plans:
        return gw.plans

    # routes live at /dashboard (app.Ethereal strips ETHEREAL_BASE_PATH before routing); the
    # links, redirects and the admin API calls the pages make carry the prefix the browser sees
    link_base = settings.base_path + BASE
    link_api = settings.base_path + API

    def ring() -> live_ring.Ring:
        obs = getattr(app, "observability", None)
        if obs is None:
            raise GatewayError(503, "the live view is not running")
        obs.metrics.flush()  # this worker's records of the last quarter second are counted first
        return obs.ring

    def store() -> Any:
        return gw.store

    def headers_of(request: Request) -> dict[bytes, bytes]:
        return dict(request.scope["headers"])

    def current(request: Request) -> str | None:
        return session.session_id(settings, session.cookie_of(headers_of(request)))

    def html(
        template: str,
        status: int = 200,
        *,
        sid: str | None = None,
        extra: list[tuple[bytes, bytes]] | None = None,
        **ctx: Any,
    ) -> Response:
        body = env.get_template(template).render(
            base=link_base,
            api=link_api,
            nav=NAV,
            signed_in=sid is not None,
            csrf=session.csrf_token(settings, sid) if sid else None,
            **ctx,
        )
        return Response(
            status, [*_SECURITY_HEADERS, *(extra or [])], Content(b"text/html; charset=utf-8", body.encode())
        )

    def tab_page(template: str, tab: str, sid: str | None, **ctx: Any) -> Response:
        """A page of the navigation: titled after its tab, which shows as the active one."""
        return html(template, sid=sid, title=tab, active=tab, **ctx)

    def redirect(location: str, extra: list[tuple[bytes, bytes]] | None = None) -> Response:
        return Response(
            303, [(b"location", location.encode()), (b"cache-control", b"no-store"), *(extra or [])], None
        )

    def json_out(payload: Any, status: int = 200) -> Response:
        return Response(
            status, [(b"cache-control", b"no-store")], Content(b"application/json", orjson.dumps(payload))
        )

    def refused_json() -> Response:
        return json_out(
            {
                "type": "error",
                "error": {"type": "authentication_error", "message": "sign in to the console first"},
            },
            401,
        )

    async def form_of(request: Request, limit: int = _FORM_MAX) -> dict[str, str]:
        raw = await read_body(request, limit)
        try:
            parsed = parse_qs(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
        except (UnicodeDecodeError, ValueError):
            raise GatewayError(400, "the form could not be read") from None
        return {k: v[0] for k, v in parsed.items()}

    def one(request: Request, name: str, limit: int = 200) -> str | None:
        values = request.query.get(name)
        value = values[0].strip() if values else ""
        return value[:limit] if value else None

    def page(handler: Any) -> Any:
        """A console page: session or a redirect to sign-in; errors shown, never a traceback."""

        async def route(request: Request) -> Response:
            if not settings.admin_key:
                return html("login.html", 403, title="Console disabled", enabled=False, active="")
            sid = current(request)
            if sid is None:
                return redirect(link_base + "/login")
            try:
                return await handler(request, sid)
            except GatewayError as exc:
                return html(
                    "login.html" if exc.status == 503 else "error.html",
                    exc.status,
                    sid=sid,
                    title="Error",
                    message=exc.message,
                    enabled=True,
                    error=exc.message,
                    active="",
                )
            except Exception:
                log.exception("console page %s failed", request.url.path.decode("latin-1"))
                return html(
                    "error.html",
                    500,
                    sid=sid,
                    title="Error",
                    message="internal error in the console",
                    active="",
                )

        route.__name__ = handler.__name__
        return route

    def api_route(handler: Any) -> Any:
        async def route(request: Request) -> Response:
            if current(request) is None:
                return refused_json()
            try:
                return await handler(request)
            except GatewayError as exc:
                return json_out(
                    {"type": "error", "error": {"type": exc.type, "message": exc.message}}, exc.status
                )

        route.__name__ = handler.__name__
        return route

    # ------------------------------------------------------------------ sign-in
    async def login_page(request: Request) -> Response:
        if settings.admin_key and current(request) is not None:
            return redirect(link_base)
        return html(
            "login.html",
            200 if settings.admin_key else 403,
            title="Sign in",
            enabled=bool(settings.admin_key),
            active="",
        )

    async def login(request: Request) -> Response:
        if not settings.admin_key:
            return html("login.html", 403, title="Sign in", enabled=False, active="")
        headers = headers_of(request)
        if not session.same_origin(headers):
            return html(
                "login.html",
                403,
                title="Sign in",
                enabled=True,
                error="Cross-site sign-in refused.",
                active="",
            )
        # wrong keys counted per client address with the admin API's (auth.admin_attempts)
        attempts, client = admin_attempts(settings), client_address(request.scope, settings.trusted_proxies)
        wait = attempts.wait(client)
        if wait:
            throttled = admin_throttled(wait)
            resp = html(
                "login.html",
                429,
                title="Sign in",
                enabled=True,
                active="",
                error=f"Too many wrong keys from your address: try again in {throttled.retry_after:.0f} s.",
            )
            resp.add_header(b"retry-after", b"%d" % int(throttled.retry_after or 1))
            return resp
        form = await form_of(request)
        presented = form.get("admin_key", "")
        if not presented or not _constant_equal(presented, settings.admin_key):
            if presented:
                attempts.fail(client)
            log.warning("console sign-in refused")
            return html(
                "login.html",
                401,
                title="Sign in",
                enabled=True,
                error="That is not the admin key.",
                active="",
            )
        value, lifetime = session.issue(settings)
        cookie = session.set_cookie_header(value, lifetime, session.over_tls(request.scope, headers))
        return redirect(link_base, [(b"set-cookie", cookie)])

    async def logout(request: Request) -> Response:
        headers = headers_of(request)
        sid = current(request)
        form = await form_of(request)
        if sid is not None:
            if session.check(settings, "POST", headers, form.get("csrf")) != "ok":
                return html(
                    "error.html",
                    403,
                    sid=sid,
                    title="Error",
                    message="Cross-site sign-out refused.",
                    active="",
                )
            session.end(sid, settings.console_session_hours * 3600)
        cookie = session.set_cookie_header("", 0, session.over_tls(request.scope, headers))
        return redirect(link_base + "/login", [(b"set-cookie", cookie)])

    # ------------------------------------------------------------------ overview
    async def series_data(spans: tuple[str, ...] = ("hour", "day")) -> dict[str, Any]:
        """The day from the hourly rollup (24 buckets per group, whatever the traffic); the last hour
        per minute from the raw rows of that hour, so the page asks for it after its first paint."""
        now = time.time()
        out: dict[str, Any] = {}
        if "hour" in spans:
            minute = float((int(now) // 60) * 60 - 59 * 60)
            out["hour"] = {
                "since": minute,
                "until": now,
                "step": 60,
                "rows": await store().usage_series(since=minute, until=now, step=60),
            }
        if "day" in spans:
            since, until = day_window(now)
            out["day"] = {
                "since": since,
                "until": now,
                "step": 3600,
                "rows": await store().usage_series(since=since, until=until, step=3600),
            }
        return out

    async def top_keys() -> list[dict[str, Any]]:
        since, until = day_window(time.time())
        rows = (await usage_totals(store(), group_by="key_id", since=since, until=until))[:10]
        found = await asyncio.gather(*(store().get_key(row["key_id"]) for row in rows if row["key_id"]))
        names = {key.id: key.name for key in found if key is not None}
        out = []
        for row in rows:
            out.append(
                {
                    **row,
                    "name": names.get(row["key_id"]),
                    "tokens": row["input_tokens"]
                    + row["output_tokens"]
                    + row["cache_read"]
                    + row["cache_creation_5m"]
                    + row["cache_creation_1h"],
                }
            )
        return out

    @page
    async def overview(request: Request, sid: str) -> Response:
        live = live_view(ring())
        series, top = await asyncio.gather(series_data(("day",)), top_keys())  # two pool connections
        return tab_page(
            "overview.html",
            "Overview",
            sid,
            live=live,
            top_keys=top,
            data_json=script_json({"live": live, "series": series}),
        )

    @api_route
    async def api_live(request: Request) -> Response:
        return json_out(live_view(ring()))

    @api_route
    async def api_series(request: Request) -> Response:
        span = one(request, "span", 10)
        return json_out(await series_data((span,) if span in ("hour", "day") else ("hour", "day")))

    # ------------------------------------------------------------------ keys
    def connect_base(request: Request) -> str:
        """Where the tools reach this gateway: ETHEREAL_PUBLIC_URL, else the host the browser used."""
        if settings.public_url:
            return settings.public_url.rstrip("/")
        headers = headers_of(request)
        host = (headers.get(b"x-forwarded-host") or headers.get(b"host") or b"localhost").decode("latin-1")
        scheme = (
            headers.get(b"x-forwarded-proto") or str(request.scope.get("scheme", "http")).encode()
        ).decode()
        return f"{scheme.split(',')[0].strip()}://{host.split(',')[0].strip()}{settings.base_path}"

    @page
    async def keys(request: Request, sid: str) -> Response:
        owner, plan, state, q = (
            one(request, "owner"),
            one(request, "plan"),
            one(request, "state"),
            one(request, "q"),
        )
        team = one(request, "team")
        after = one(request, "after_id", 64)
        if state not in (None, "active", "revoked", "expired"):
            state = None
        found = plans().get(plan) if plan else None
        plan_name = found.name if found else plan
        page_size = 100
        records = await store().list_keys(
            owner=owner, team=team, plan=plan_name, state=state, limit=page_size + 1, after_id=after
        )
        more = len(records) > page_size
        records = records[:page_size]
        if q:
            needle = q.lower()
            records = [
                r
                for r in records
                if needle in r.name.lower() or needle in r.owner.lower() or needle in r.id.lower()
            ]
        key_ids = [r.id for r in records]
        spend = await store().spend_by_key(key_ids) if key_ids else {}
        last = await store().last_used(key_ids) if key_ids else {}
        rows = []
        for r in records:
            item = key_json(r, spend.get(r.id))
            cost = int(item["spend"]["cost_micro"])
            budget = r.budget_micro_usd
            item.update(
                spend_usd=_usd(cost),
                budget_usd=_usd(budget) if budget is not None else None,
                spend_pct=round(cost / budget * 100, 1) if budget else 0,
                last_used=last.get(r.id),
            )
            rows.append(item)
        next_query = urlencode(
            {
                k: v
                for k, v in (
                    ("owner", owner),
                    ("team", team),
                    ("plan", plan),
                    ("state", state),
                    ("q", q),
                    ("after_id", records[-1].id if records else None),
                )
                if v
            }
        )
        base = connect_base(request)
        return tab_page(
            "keys.html",
            "Keys",
            sid,
            keys=rows,
            plans=plans().names(),
            q=q,
            models=model_choices(),
            connect_base=base,
            connect=[s.as_json(connect.KEY, base) for s in connect.SETUPS],
            owner=owner,
            team=team,
            plan=plan,
            state=state,
            next_after=more,
            next_query=next_query,
        )

    # ------------------------------------------------------------------ limits
    @page
    async def limits(request: Request, sid: str) -> Response:
        """Spend limits per person, team and organization; each person's spend this period against
        their cap (blocked until the reset); the audit; webhooks and their delivery log."""
        from ethereal.admin.webhooks import delivery_json, webhook_json
        from ethereal.alerts.webhooks import EVENTS
        from ethereal.spend.service import audit_json, limit_json, people_of

        spend = gw.spend
        await spend.reload()
        now = time.time()
        people = await people_of(store(), one(request, "user_id"))
        effective: list[dict[str, Any]] = []
        by_user: dict[str, dict[str, Any]] = {}
        for row in await spend.effective(people, now, periods=["daily", "weekly", "monthly"]):
            person = by_user.get(row["actor"]["user_id"])
            if person is None:
                person = by_user[row["actor"]["user_id"]] = {
                    "user_id": row["actor"]["user_id"],
                    "rbac_group_ids": row["rbac_group_ids"],
                    "limits": [],
                }
                effective.append(person)
            row["spent_usd"] = f"{float(row['period_to_date_spend']) / 100:.2f}"
            row["amount_usd"] = None if row["amount"] is None else f"{int(row['amount']) / 100:.2f}"
            row["source_type"] = row["source"]["type"] if row["spend_limit_id"] else "none"
            person["limits"].append(row)
        teams = sorted(
            {t for ts in people.values() for t in ts}
            | {lim.scope_id for lim in spend.book.limits if lim.scope_type == "rbac_group"}
        )
        pools = []
        for lim in spend.book.limits:
            if lim.shared and lim.amount_cents is not None:
                spent = (
                    (await spend.team_spent([lim.scope_id], lim.period, now)).get(lim.scope_id, 0)
                    if lim.scope_type == "rbac_group"
                    else sum(
                        (
                            await store().spend_totals(dim="owner", since=period_start(lim.period, now))
                        ).values()
                    )
                )
                pools.append(
                    {
                        **limit_json(lim),
                        "spent_usd": f"{spent / 1_000_000:.2f}",
                        "amount_usd": f"{lim.amount_cents / 100:.2f}",
                        "spent_micro": spent,
                        "cap_micro": lim.amount_cents * 10_000,
                    }
                )
        rows = sorted(
            (limit_json(lim) for lim in spend.book.limits),
            key=lambda x: (x["scope"]["type"], str(x["scope"]), x["period"]),
        )
        for row in rows:
            row["amount_usd"] = None if row["amount"] is None else f"{int(row['amount']) / 100:.2f}"
        audit, _ = await store().list_audit(limit=20)
        hooks = [webhook_json(h) for h in await store().list_webhooks()]
        deliveries = [delivery_json(d) for d in await store().list_deliveries(limit=30)]
        return tab_page(
            "limits.html",
            "Limits",
            sid,
            limits=rows,
            people=effective,
            teams=teams,
            pools=pools,
            audit=[audit_json(a) for a in audit],
            hooks=hooks,
            deliveries=deliveries,
            events=EVENTS,
            user_id=one(request, "user_id"),
            spl=settings.base_path + "/v1/organizations/spend_limits",
        )

    # ------------------------------------------------------------------ upstreams
    async def last_correction() -> dict[str, Any] | None:
        return correction_json(await store().last_price_correction())

    def models_view() -> dict[str, Any]:
        """The registry as the upstreams page shows it: version, alerts, provisionally billed models."""
        registry = gw.registry
        return {
            "version": registry.version,
            "source": registry.source,
            "expired": [m.id for m in registry.expired()],
            "provisional": [
                {"id": m.id, "card": m.cards[0].id.removeprefix("provisional:")}
                for m in registry.provisional_models()
            ],
        }

    @page
    async def upstreams(request: Request, sid: str) -> Response:
        return tab_page(
            "upstreams.html",
            "Upstreams",
            sid,
            upstreams=await gw.upstreams.list(),
            registry_view=models_view(),
            models=model_choices(),
            correction=await last_correction(),
        )

    # ------------------------------------------------------------------ usage
    def usage_filter(request: Request) -> tuple[UsageFilter, dict[str, str]]:
        raw = {
            name: one(request, name, 128) for name in ("key_id", "model", "route", "status", "since", "until")
        }
        shown = {k: v for k, v in raw.items() if v}
        lo = hi = None
        status = raw["status"]
        if status:
            if len(status) == 3 and status[0] in "12345" and status[1:].lower() == "xx":
                lo, hi = int(status[0]) * 100, int(status[0]) * 100 + 100
            elif status.isdigit() and len(status) == 3:
                lo, hi = int(status), int(status) + 1
            else:
                raise GatewayError(400, "status: give a code (429) or a class (4xx)")
        filters = UsageFilter(
            key_id=raw["key_id"],
            model=raw["model"],
            route=raw["route"],
            status_lo=lo,
            status_hi=hi,
            since=parse_time("since", raw["since"]),
            until=parse_time("until", raw["until"]),
        )
        return filters, shown

    def cursor(request: Request) -> tuple[float, str] | None:
        raw = one(request, "before", 120)
        if not raw or "," not in raw:
            return None
        ts, _, rid = raw.partition(",")
        try:
            return float(ts), rid
        except ValueError:
            return None

    @page
    async def usage(request: Request, sid: str) -> Response:
        shown: dict[str, str] = {}
        try:
            filters, shown = usage_filter(request)
        except GatewayError as exc:
            return html(
                "usage.html",
                400,
                sid=sid,
                title="Usage",
                active="Usage",
                f=shown,
                routes=ROUTES,
                records=[],
                error=exc.message,
                query="",
                older=None,
                models=model_choices(),
            )
        page_size = 50
        records = await store().list_usage(filters, limit=page_size + 1, before=cursor(request))
        older = None
        if len(records) > page_size:
            records = records[:page_size]
            last = records[-1]
            older = urlencode({**shown, "before": f"{last.started_at!r},{last.request_id}"})
        return tab_page(
            "usage.html",
            "Usage",
            sid,
            f=shown,
            routes=ROUTES,
            records=records,
            query=urlencode(shown),
            older=older,
            error=None,
            correction=await last_correction(),
            models=model_choices(),
        )

    async def usage_csv(request: Request) -> Response:
        if current(request) is None:
            return refused_json()
        try:
            filters, _ = usage_filter(request)
        except GatewayError as exc:
            return json_out(
                {"type": "error", "error": {"type": exc.type, "message": exc.message}}, exc.status
            )
        st = store()
        columns = (
            "request_id",
            "started_at",
            "key_id",
            "credential",
            "route",
            "model",
            "status",
            "stream",
            "input_tokens",
            "output_tokens",
            "cache_creation_5m",
            "cache_creation_1h",
            "cache_read",
            "exact",
            "cost_micro",
            "rate_card",
            "priced_provisional",
            "speed",
            "inference_geo",
            "ttfb_ms",
            "duration_ms",
            "error_type",
            "error_message",
        )

        async def rows() -> AsyncIterator[bytes]:
            buf = io.StringIO()
            writer = csv.writer(buf)
            writer.writerow(columns)
            before: tuple[float, str] | None = None
            sent = 0
            while sent < _CSV_MAX_ROWS:
                batch = await st.list_usage(filters, limit=1000, before=before)
                if not batch:
                    break
                for rec in batch:
                    writer.writerow(
                        [
                            _ts(rec.started_at) if c == "started_at" else csv_cell(getattr(rec, c))
                            for c in columns
                        ]
                    )
                sent += len(batch)
                before = (batch[-1].started_at, batch[-1].request_id)
                yield buf.getvalue().encode()
                buf.seek(0)
                buf.truncate()
                if len(batch) < 1000:
                    break
            if buf.tell():
                yield buf.getvalue().encode()

        name = f"ethereal-usage-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.csv"
        return Response(
            200,
            [
                (b"content-disposition", f'attachment; filename="{name}"'.encode()),
                (b"cache-control", b"no-store"),
            ],
            StreamedContent(b"text/csv; charset=utf-8", rows),
        )

    # ------------------------------------------------------------------ estimator
    def estimator_view(
        sid: str | None,
        status: int = 200,
        *,
        form: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> Response:
        """The estimator page: an empty form, or the one asked with its estimate, or an error."""
        return html(
            "estimate.html",
            status,
            sid=sid,
            title="Estimator",
            active="Estimator",
            form=form or {"system": "", "prompt": "", "output_tokens": 500, "images": 0},
            result=result,
            accuracy=accuracy,
            error=error,
        )

    async def estimate_page(request: Request) -> Response:
        return estimator_view(current(request))

    async def estimate(request: Request) -> Response:
        sid = current(request)
        is_json = (request.get_first_header(b"content-type") or b"").startswith(b"application/json")
        wait = limiter.take(client_address(request.scope, settings.trusted_proxies))
        if wait:
            message = f"too many estimates from your address: try again in {wait:.0f} s"
            if is_json:
                resp = json_out(
                    {"type": "error", "error": {"type": "rate_limit_error", "message": message}}, 429
                )
            else:
                resp = estimator_view(sid, 429, error=message)
            resp.add_header(b"retry-after", str(max(1, round(wait))).encode())
            return resp
        try:
            if is_json:
                raw = await read_body(request, _ESTIMATE_MAX)
                try:
                    data = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    raise GatewayError(400, "body: not valid JSON") from None
                if not isinstance(data, dict):
                    raise GatewayError(400, "body: must be a JSON object")
                form = {k: data.get(k) for k in ("system", "prompt", "output_tokens", "images")}
            else:
                form = dict(await form_of(request, _ESTIMATE_MAX))
            result = estimator.estimate(form)
        except Exception as raised:
            exc = raised if isinstance(raised, GatewayError) else GatewayError(500, "the estimate failed")
            if not isinstance(raised, GatewayError):
                log.exception("estimate failed")
            if is_json:
                return json_out(
                    {"type": "error", "error": {"type": exc.type, "message": exc.message}}, exc.status
                )
            return estimator_view(sid, exc.status, error=exc.message)
        if is_json:
            return json_out(result)
        shown = {
            "system": form.get("system") or "",
            "prompt": form.get("prompt") or "",
            "output_tokens": result["output_tokens"],
            "images": result["images"],
        }
        return estimator_view(sid, form=shown, result=result)

    # ------------------------------------------------------------------ static files
    async def static_file(request: Request) -> Response:
        found = static.get(request.route_values.get("tail") or "")
        if found is None:
            return Response(404, None, Content(b"text/plain", b"not found"))
        ctype, data = found
        return Response(
            200,
            [(b"cache-control", b"public, max-age=3600"), (b"x-content-type-options", b"nosniff")],
            Content(ctype, data),
        )

    router = app.router
    router.add_get(BASE, overview)
    router.add_get(BASE + "/login", login_page)
    router.add_post(BASE + "/login", login)
    router.add_post(BASE + "/logout", logout)
    router.add_get(BASE + "/keys", keys)
    router.add_get(BASE + "/limits", limits)
    router.add_get(BASE + "/upstreams", upstreams)
    router.add_get(BASE + "/usage", usage)
    router.add_get(BASE + "/usage.csv", usage_csv)
    router.add_get(BASE + "/api/live", api_live)
    router.add_get(BASE + "/api/series", api_series)
    router.add_get(BASE + "/estimate", estimate_page)
    router.add_post(BASE + "/estimate", estimate)
    router.add_get("/estimate", estimate_page)
    router.add_post("/estimate", estimate)
    router.add_get(BASE + "/static/*", static_file)


def _constant_equal(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())
