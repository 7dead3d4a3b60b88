"""The CSU console: an aiohttp app with server-rendered pages, a little JavaScript and server-sent events.

Security in one place, the middleware: every page but the login form and the static files needs a live
session (cookie HttpOnly, SameSite=Strict, its token stored only hashed); every POST carries the
session's CSRF token; each route names the permission it needs and the role is checked here, on the
server. Templates escape everything they print (jinja2 autoescape), the Content-Security-Policy allows
no inline script and no source but the collector itself (CSU networks are closed: no CDN, no font from
outside). Every action lands in the collector's audit log with the user's name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from edge_agent.collector.console.accounts import (
    SESSION_IDLE_S,
    SESSION_MAX_S,
    AccountError,
    LoginThrottle,
    Passwords,
    Role,
    allows,
    check_password,
    check_role,
    check_user_name,
    new_token,
    session_expired,
    token_hash,
)
from edge_agent.collector.console.clips import ClipJob, ClipJobs
from edge_agent.collector.console.data import (
    Account,
    Acknowledgement,
    Alert,
    AlertQuery,
    ConsoleData,
    DuplicateError,
    Session,
)
from edge_agent.collector.console.devices import DeviceError, DeviceGateway, Snapshot
from edge_agent.collector.console.fleet import FleetRules, fleet_view
from edge_agent.collector.console.forms import COMMENT_MAX, Form
from edge_agent.collector.console.live import LiveHub, Subscription
from edge_agent.collector.evidence import CLIP_FILE
from edge_agent.collector.fetch import ClipRequest
from edge_agent.collector.store import EventRow
from edge_agent.formats.audit import AuditLog, log_files, verify_log
from edge_agent.formats.times import Clock, iso_ms

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "csu_session"
LOGIN_COOKIE = "csu_login"
PUBLIC_PATHS = ("/login", "/static/", "/favicon.ico")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self';"
    " connect-src 'self'; font-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none';"
    " form-action 'self'"
)
SNAPSHOTS_KEPT = 256
MAX_HOURS = 24 * 31.0
TOUCH_EVERY_S = 60.0
"""A session's last use is written at most once a minute (idle expiry is in tens of minutes): a clip page
polls several times a second, and each request would otherwise be a write to the shared database."""
"""The longest look back a page offers (a month)."""
DEFAULT_MAX_CLIP_S = 4 * 3600.0
SYSTEM_ACTOR = "console"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SESSION = web.RequestKey("session", Session)
ACCOUNT = web.RequestKey("account", Account)


@dataclass(frozen=True)
class ConsoleSettings:
    """How the console judges the fleet and how long sessions live."""

    rules: FleetRules = field(default_factory=FleetRules)
    session_idle_s: float = SESSION_IDLE_S
    session_max_s: float = SESSION_MAX_S
    secure_cookies: bool = False  # set when the console is served over HTTPS
    default_max_clip_s: float = DEFAULT_MAX_CLIP_S
    alert_hours: float = 24.0
    snapshot_on_alert: bool = True
    poll_s: float = 0.25


class SnapshotCache:
    """The latest masked snapshots, in memory only (a CSU disk never holds a plaintext frame)."""

    def __init__(self, kept: int = SNAPSHOTS_KEPT) -> None:
        self._items: OrderedDict[str, Snapshot] = OrderedDict()
        self._kept = kept

    def put(self, key: str, snapshot: Snapshot) -> None:
        """Keep `snapshot` under `key`, forgetting the oldest beyond the limit."""
        self._items[key] = snapshot
        self._items.move_to_end(key)
        while len(self._items) > self._kept:
            self._items.popitem(last=False)

    def get(self, key: str) -> Snapshot | None:
        """The snapshot kept under `key`."""
        return self._items.get(key)


def fmt_time(ts: float | None) -> str:
    """`2024-05-01 12:00:03 UTC` (what the pages print)."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def input_time(ts: float | None) -> str:
    """A time as an HTML `datetime-local` value (UTC, seconds)."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def fmt_age(seconds: float | None) -> str:
    """`12 s`, `4 min`, `3 h`, `2 d`."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{max(0.0, seconds):.0f} s"


class Console:
    """The console's state and routes (make_app builds the aiohttp application)."""

    def __init__(
        self,
        data: ConsoleData,
        gateway: DeviceGateway,
        jobs: ClipJobs,
        audit: AuditLog,
        settings: ConsoleSettings | None = None,
        clock: Clock = time.time,
        passwords: Passwords | None = None,
    ) -> None:
        self.data = data
        self.gateway = gateway
        self.jobs = jobs
        self.audit = audit
        self.settings = settings or ConsoleSettings()
        self.clock = clock
        self.passwords = passwords or Passwords()
        self.throttle = LoginThrottle()
        self.snapshots = SnapshotCache()
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.globals.update(
            fmt_time=fmt_time, fmt_age=fmt_age, input_time=input_time, allows=allows
        )
        self.hub = LiveHub(data, self._render_motion, poll_s=self.settings.poll_s)
        self.hub.on_new_event(self._snapshot_for_alert)

    # --- application ----------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """The aiohttp application: middleware, routes, static files, the live hub's lifetime."""
        app = web.Application(middlewares=[self._middleware], client_max_size=256 * 1024)
        routes: list[tuple[str, str, Handler, str]] = [
            ("GET", "/", self.home, ""),
            ("GET", "/fleet", self.fleet_page, "fleet"),
            ("GET", "/fleet/table", self.fleet_table, "fleet"),
            ("GET", "/live", self.live, "fleet"),
            ("GET", "/alerts", self.alerts_page, "alerts"),
            ("POST", "/alerts/ack", self.acknowledge, "alerts"),
            ("GET", "/alerts/snapshot.jpg", self.alert_snapshot, "snapshots"),
            ("GET", "/camera", self.camera_page, "snapshots"),
            ("POST", "/camera/snapshot", self.camera_refresh, "snapshots"),
            ("GET", "/camera/snapshot.jpg", self.camera_snapshot, "snapshots"),
            ("GET", "/clips", self.clips_page, "clips"),
            ("POST", "/clips", self.clip_request, "clips"),
            ("GET", "/clips/{job}", self.clip_job_page, "clips"),
            ("GET", "/clips/{job}/status", self.clip_job_status, "clips"),
            ("GET", "/clips/{job}/clip.mp4", self.clip_video, "clips"),
            ("GET", "/clips/{job}/export.tar", self.clip_archive, "clips"),
            ("GET", "/holds", self.holds_page, "holds"),
            ("POST", "/holds", self.hold_add, "holds"),
            ("POST", "/holds/release", self.hold_release, "holds"),
            ("GET", "/audit", self.audit_page, "audit"),
            ("GET", "/users", self.users_page, "users"),
            ("POST", "/users", self.user_add, "users"),
            ("POST", "/users/state", self.user_state, "users"),
        ]
        for method, path, handler, permission in routes:
            app.router.add_route(method, path, self._guard(handler, permission))
        app.router.add_get("/login", self.login_page)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_static("/static/", HERE / "static", append_version=False)
        app.router.add_get("/favicon.ico", self.favicon)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        return app

    async def _startup(self, _app: web.Application) -> None:
        self.hub.start()

    async def _shutdown(self, _app: web.Application) -> None:
        await self.hub.stop()

    async def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run blocking work (store, devices, fsynced audit) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, function, *args)

    async def _audit(self, action: str, user: str, **fields: Any) -> None:
        await self._run(lambda: self.audit.append(action=f"console-{action}", user=user, **fields))

    # --- sessions, CSRF, roles --------------------------------------------------------------------

    async def _current(self, request: web.Request) -> tuple[Session, Account] | None:
        token = request.cookies.get(SESSION_COOKIE, "")
        if not token:
            return None
        hashed = token_hash(token)
        session = await self._run(self.data.session, hashed)
        now = self.clock()
        if session is None:
            return None
        if session_expired(session, now, self.settings.session_idle_s, self.settings.session_max_s):
            await self._run(self.data.delete_session, hashed)
            return None
        account = await self._run(self.data.user, session.user)
        if account is None or account.disabled:
            return None
        if now - session.last_seen >= TOUCH_EVERY_S:
            await self._run(self.data.touch_session, hashed, now)
        return session, account

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        public = request.path.startswith(PUBLIC_PATHS)
        if not public:
            current = await self._current(request)
            if current is None:
                return self._login_needed(request)
            request[SESSION], request[ACCOUNT] = current
            if request.method == "POST":
                form = await request.post()
                sent = str(form.get("csrf", "")) or request.headers.get("X-CSRF-Token", "")
                if not sent or not _same(sent, current[0].csrf):
                    await self._audit("csrf-refused", current[1].name, path=request.path)
                    return self._error(
                        request, 403, "This form has no valid security token (CSRF): reload the page."
                    )
        response = await handler(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if not request.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    def _login_needed(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path != "/live":
            target = request.path_qs if request.path != "/" else "/fleet"
            raise web.HTTPSeeOther("/login?" + urlencode({"next": target, "expired": "1"}))
        return self._error(request, 401, "Your session has expired or you are not logged in: log in again.")

    def _guard(self, handler: Handler, permission: str) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            account: Account = request[ACCOUNT]
            if permission and not allows(account.role, permission):
                await self._audit("denied", account.name, path=request.path, permission=permission)
                return self._error(
                    request, 403, f"Your role ({account.role}) does not give access to {permission}."
                )
            return await handler(request)

        return guarded

    # --- rendering ------------------------------------------------------------------------------

    def _render(self, template: str, **context: Any) -> str:
        return self.templates.get_template(template).render(**context)

    def _page(self, request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
        account = request.get(ACCOUNT)
        session = request.get(SESSION)
        text = self._render(
            template,
            user=account,
            csrf=session.csrf if session else "",
            path=request.path,
            **context,
        )
        return web.Response(text=text, content_type="text/html", status=status)

    def _form_page(
        self,
        request: web.Request,
        template: str,
        errors: dict[str, str] | None,
        values: dict[str, str] | None = None,
        **context: Any,
    ) -> web.Response:
        """A page with a form: 400 naming the refused fields when a submission failed, its values kept."""
        status = 400 if errors else 200
        return self._page(request, template, status, errors=errors or {}, values=values or {}, **context)

    def _error(self, request: web.Request, status: int, message: str) -> web.Response:
        return self._page(request, "error.html", status=status, status_code=status, message=message)

    def _render_motion(self, row: EventRow) -> str:
        alert = Alert(
            site=row.site,
            device=row.device,
            camera=row.camera,
            event_id=row.event_id,
            start_ts=row.start_ts,
            last_ts=row.ts,
            ended=row.phase == "end",
            score=row.score,
            zones=row.zones,
            last_id=row.id,
            end_reason=row.end_reason,
        )
        html = self.templates.get_template("_alert_row.html").render(
            alert=alert, csrf="", can_ack=True, back="/alerts"
        )
        return json.dumps(
            {
                "key": alert.key,
                "html": html,
                "phase": row.phase,
                "state": alert.state,
                "last": fmt_time(row.ts),
                "site": row.site,
                "camera": row.camera,
                "zones": row.zones,
            }
        )

    # --- login ----------------------------------------------------------------------------------

    async def favicon(self, request: web.Request) -> web.StreamResponse:
        """The tab icon (browsers ask for it on their own; it must not bounce to the login form)."""
        return web.FileResponse(HERE / "static" / "favicon.svg", headers={"Content-Type": "image/svg+xml"})

    async def login_page(self, request: web.Request) -> web.Response:
        """The login form (with a login CSRF token in a cookie and the form).

        The token already in the browser's cookie is kept, so that a second login page (another tab,
        a redirected favicon request) does not invalidate the form the user is filling in.
        """
        token = request.cookies.get(LOGIN_COOKIE, "")
        token = token if len(token) == len(new_token()) else new_token()
        response = self._page(
            request,
            "login.html",
            login_token=token,
            next=_safe_next(request.query.get("next", "")),
            expired=request.query.get("expired") == "1",
            error="",
            name="",
        )
        self._set_cookie(response, LOGIN_COOKIE, token, max_age=1800)
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        """Check the form token, the throttle, the password; then open a session."""
        form = await request.post()
        name = str(form.get("name", "")).strip()[:64]
        password = str(form.get("password", ""))
        target = _safe_next(str(form.get("next", ""))) or "/fleet"
        remote = request.remote or "-"
        cookie_token = request.cookies.get(LOGIN_COOKIE, "")
        if not cookie_token or not _same(str(form.get("csrf", "")), cookie_token):
            return self._login_refused(
                request, 403, name, target, "The login form expired (CSRF): try again."
            )
        now = self.clock()
        keys = (f"name:{name.lower()}", f"addr:{remote}")
        wait = self.throttle.wait_s(keys, now)
        if wait > 0:
            await self._audit("login", name, outcome="throttled", remote=remote)
            return self._login_refused(
                request, 429, name, target, f"Too many failed logins: try again in {wait:.0f} s."
            )
        account = await self._run(self.data.user, name) if name else None
        if account is None or account.disabled:
            await self._run(self.passwords.dummy_verify, password)
            ok = False
        else:
            ok = await self._run(self.passwords.verify, account.password_hash, password)
        if not ok or account is None:
            self.throttle.failed(keys, now)
            await self._audit("login", name, outcome="refused", remote=remote)
            return self._login_refused(request, 401, name, target, "Wrong user name or password.")
        self.throttle.succeeded(keys[0])
        token = new_token()
        session = Session(token_hash(token), account.name, new_token(), now, now)
        await self._run(self.data.create_session, session)
        # Sessions whose browser never came back are removed here, at the rare moment a session is made.
        await self._run(self.data.purge_sessions, now - self.settings.session_idle_s)
        await self._audit("login", account.name, outcome="accepted", remote=remote, role=account.role)
        response = _redirect(target)
        self._set_cookie(response, SESSION_COOKIE, token, max_age=int(self.settings.session_max_s))
        response.del_cookie(LOGIN_COOKIE, path="/")
        return response

    def _login_refused(
        self, request: web.Request, status: int, name: str, target: str, error: str
    ) -> web.Response:
        token = new_token()
        response = self._page(
            request,
            "login.html",
            status=status,
            login_token=token,
            next=target,
            expired=False,
            error=error,
            name=name,
        )
        self._set_cookie(response, LOGIN_COOKIE, token, max_age=1800)
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """End the session (the middleware has checked it and the form's CSRF token)."""
        session: Session = request[SESSION]
        await self._run(self.data.delete_session, session.token_hash)
        await self._audit("logout", session.user)
        response = _redirect("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    def _set_cookie(self, response: web.StreamResponse, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.settings.secure_cookies,
        )

    # --- fleet ----------------------------------------------------------------------------------

    async def home(self, request: web.Request) -> web.StreamResponse:
        """Operators start on the fleet."""
        raise web.HTTPSeeOther("/fleet")

    async def _fleet(self, site: str) -> Any:
        rows = await self._run(self.data.devices)
        return fleet_view(rows, self.clock(), self.settings.rules, site, sites=[r.site for r in rows])

    async def fleet_page(self, request: web.Request) -> web.Response:
        """Sites, devices, cameras: problems first, counts, a plan; live."""
        site = request.query.get("site", "")
        return self._page(request, "fleet.html", fleet=await self._fleet(site), site=site)

    async def fleet_table(self, request: web.Request) -> web.Response:
        """The live part of the fleet page (the script swaps it in on each `fleet` event)."""
        site = request.query.get("site", "")
        text = self._render("_fleet_body.html", fleet=await self._fleet(site), site=site)
        return web.Response(text=text, content_type="text/html")

    async def live(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: `fleet` (something changed: reload the table) and `motion` (one row)."""
        query = request.query
        subscription = Subscription(
            fleet=query.get("fleet") == "1",
            motion=query.get("motion") == "1",
            site=query.get("site", ""),
            camera=query.get("camera", ""),
            zone=query.get("zone", ""),
        )
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")
        queue = self.hub.subscribe(subscription)
        try:
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), timeout=15.0)
                except TimeoutError:
                    if await self._current(request) is None:
                        break  # the session ended: the page will be sent to the login form
                    await response.write(b": keep-alive\n\n")
                    continue
                if message.event == "bye":
                    break
                await response.write(message.encode())
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.hub.unsubscribe(queue)
        return response

    # --- alerts ---------------------------------------------------------------------------------

    def _alert_query(self, query: Any) -> tuple[AlertQuery, dict[str, str]]:
        filters = {k: str(query.get(k, "")).strip()[:64] for k in ("site", "camera", "zone")}
        hours = _hours(query, default=self.settings.alert_hours, lowest=0.1)
        filters["hours"] = f"{hours:g}"
        alert_query = AlertQuery(
            since=self.clock() - hours * 3600,
            site=filters["site"],
            camera=filters["camera"],
            zone=filters["zone"],
        )
        return alert_query, filters

    async def alerts_page(self, request: web.Request, errors: dict[str, str] | None = None) -> web.Response:
        """Motion events newest first, filterable, with acknowledgements; live."""
        alert_query, filters = self._alert_query(request.query)
        alerts = await self._run(self.data.alerts, alert_query)
        devices = await self._run(self.data.devices)
        return self._form_page(
            request,
            "alerts.html",
            errors,
            alerts=alerts,
            filters=filters,
            sites=sorted({d.site for d in devices}),
            snapshot_keys={a.key for a in alerts if self.snapshots.get(a.key)},
        )

    async def acknowledge(self, request: web.Request) -> web.StreamResponse:
        """Acknowledge one alert with a comment (who and when from the session and the clock)."""
        account: Account = request[ACCOUNT]
        form = Form(_fields(await request.post()))
        site, device = form.ident("site"), form.ident("device")
        event_id = form.text("event_id", max_length=128)
        comment = form.text("comment", required=False, max_length=COMMENT_MAX)
        if form.ok:
            ack = Acknowledgement(site, device, event_id, account.name, self.clock(), comment)
            try:
                await self._run(self.data.acknowledge, ack)
            except DuplicateError as error:
                form.errors["event_id"] = f"event_id: {error}"
        if not form.ok:
            return await self.alerts_page(request, form.errors)
        await self._audit("ack", account.name, site=site, device=device, event_id=event_id, comment=comment)
        back = str(form.raw.get("back", ""))
        raise web.HTTPSeeOther(back if back.startswith("/alerts") else "/alerts")

    async def alert_snapshot(self, request: web.Request) -> web.StreamResponse:
        """The masked snapshot taken when an alert started (from memory)."""
        snapshot = self.snapshots.get(request.query.get("key", ""))
        if snapshot is None:
            return self._error(request, 404, "No snapshot kept for this alert.")
        return _jpeg(snapshot)

    def _snapshot_for_alert(self, row: EventRow) -> None:
        if not self.settings.snapshot_on_alert or self.gateway.link is None:
            return
        key = f"{row.site}/{row.device}/{row.event_id}"

        def take() -> None:
            try:
                snapshot = self.gateway.snapshot(row.site, row.device, row.camera, SYSTEM_ACTOR)
            except DeviceError as error:
                log.info("no snapshot for alert %s: %s", key, error)
                return
            self.snapshots.put(key, snapshot)
            self.snapshots.put(f"{row.site}/{row.device}/{row.camera}", snapshot)
            where = {"site": row.site, "device": row.device, "camera": row.camera}
            self.audit.append(
                action="console-snapshot", user=SYSTEM_ACTOR, reason="alert", event_id=row.event_id, **where
            )

        asyncio.get_running_loop().run_in_executor(None, take)

    # --- camera ---------------------------------------------------------------------------------

    def _camera_ref(self, form: Form) -> tuple[str, str, str]:
        return form.ident("site"), form.ident("device"), form.ident("camera")

    async def camera_page(self, request: web.Request) -> web.Response:
        """Last snapshot, events timeline, recording coverage (gaps visible), holds on this camera."""
        form = Form(_fields(request.query))
        site, device, camera = self._camera_ref(form)
        if not form.ok:
            return self._error(request, 400, "; ".join(form.errors.values()))
        status = await self._run(self.data.device_status, site, device)
        if status is None:
            return self._error(request, 404, f"No device {site}/{device} known to this collector.")
        account: Account = request[ACCOUNT]
        hours = _hours(request.query, default=0.25, lowest=0.05)
        now = self.clock()
        start = now - hours * 3600
        alerts = await self._run(
            self.data.alerts, AlertQuery(since=start, site=site, device=device, camera=camera, limit=1000)
        )
        coverage_error = ""
        segments: list[dict[str, Any]] = []
        holds: list[dict[str, Any]] = []
        try:
            segments = await self._run(self.gateway.segments, site, device, camera, start, now)
            if allows(account.role, "holds"):
                holds = [
                    h for h in await self._run(self.gateway.holds, site, device) if h.get("camera") == camera
                ]
        except DeviceError as error:
            coverage_error = str(error)
        timeline = _timeline(start, now, segments, alerts, holds)
        snapshot = self.snapshots.get(f"{site}/{device}/{camera}")
        # The camera page holds the clip form, never refused here (a refused request lands on /clips).
        return self._form_page(
            request,
            "camera.html",
            None,
            site=site,
            device=device,
            camera=camera,
            hours=f"{hours:g}",
            online=status.online,
            alerts=alerts,
            holds=holds,
            timeline=timeline,
            coverage_error=coverage_error,
            snapshot=snapshot,
            snapshot_error=request.query.get("snapshot_error", ""),
            clip_start=input_time(max(start, now - 60)),
            clip_end=input_time(now - 5),
            max_clip_s=_max_clip_s(status.status, self.settings.default_max_clip_s),
            now=now,
        )

    async def camera_refresh(self, request: web.Request) -> web.StreamResponse:
        """Ask the device for a fresh masked snapshot (audited with the user)."""
        account: Account = request[ACCOUNT]
        form = Form(_fields(await request.post()))
        site, device, camera = self._camera_ref(form)
        if not form.ok:
            return self._error(request, 400, "; ".join(form.errors.values()))
        back = {"site": site, "device": device, "camera": camera}
        try:
            snapshot = await self._run(self.gateway.snapshot, site, device, camera, account.name)
        except DeviceError as error:
            await self._audit("snapshot", account.name, outcome="failed", detail=str(error), **back)
            raise web.HTTPSeeOther("/camera?" + urlencode({**back, "snapshot_error": str(error)})) from None
        self.snapshots.put(f"{site}/{device}/{camera}", snapshot)
        await self._audit("snapshot", account.name, outcome="accepted", **back)
        raise web.HTTPSeeOther("/camera?" + urlencode(back))

    async def camera_snapshot(self, request: web.Request) -> web.StreamResponse:
        """The camera's latest snapshot kept in memory."""
        key = "/".join(request.query.get(k, "") for k in ("site", "device", "camera"))
        snapshot = self.snapshots.get(key)
        if snapshot is None:
            return self._error(request, 404, "No snapshot yet: use Refresh.")
        return _jpeg(snapshot)

    # --- clips ----------------------------------------------------------------------------------

    async def _cameras(self) -> list[str]:
        rows = await self._run(self.data.devices)
        return sorted(
            f"{r.site}/{r.device}/{c.get('id')}"
            for r in rows
            for c in (r.status or {}).get("cameras", [])
            if isinstance(c, dict) and c.get("state") != "unconfigured"
        )

    async def clips_page(
        self, request: web.Request, errors: dict[str, str] | None = None, values: dict[str, str] | None = None
    ) -> web.Response:
        """The clip request form and the jobs so far."""
        now = self.clock()
        return self._form_page(
            request,
            "clips.html",
            errors,
            values or {"start": input_time(now - 60), "end": input_time(now - 5)},
            cameras=await self._cameras(),
            jobs=self.jobs.all(),
        )

    async def clip_request(self, request: web.Request) -> web.StreamResponse:
        """Validate and start a clip job; the officer is the logged-in user."""
        account: Account = request[ACCOUNT]
        raw = _fields(await request.post())
        form = Form(raw)
        site, device, camera = _split_camera(form)
        requisition = form.reference("requisition")
        status = await self._run(self.data.device_status, site, device) if site and device else None
        if form.ok and status is None:
            form.errors["camera"] = f"camera: device {site}/{device} is unknown to this collector"
        max_s = _max_clip_s(status.status if status else None, self.settings.default_max_clip_s)
        start, end = form.clip_range(max_s, self.clock())
        if not form.ok:
            await self._audit("clip-request", account.name, outcome="refused", errors=form.errors)
            return await self.clips_page(request, form.errors, raw)
        clip = ClipRequest(site, device, camera, start, end, requisition, officer=account.name)
        job = self.jobs.submit(account.name, clip)
        where = {"site": site, "device": device, "camera": camera, "start_ts": start, "end_ts": end}
        await self._audit(
            "clip-request", account.name, outcome="accepted", job=job.id, requisition=requisition, **where
        )
        raise web.HTTPSeeOther(f"/clips/{job.id}")

    def _job(self, request: web.Request) -> ClipJob:
        job = self.jobs.get(request.match_info["job"])
        if job is None:
            raise web.HTTPNotFound(text="no such clip job")
        return job

    async def clip_job_page(self, request: web.Request) -> web.Response:
        """Progress while fetching; then the verified clip, its evidence manifest and the archive."""
        job = self._job(request)
        account: Account = request[ACCOUNT]
        if job.playable:
            await self._audit("clip-view", account.name, job=job.id, requisition=job.request.requisition)
        evidence_text = json.dumps(job.evidence, indent=2, sort_keys=True) if job.evidence else ""
        return self._page(request, "clip_job.html", job=job, evidence_text=evidence_text)

    async def clip_job_status(self, request: web.Request) -> web.Response:
        """The job's progress as JSON (polled by the page)."""
        return web.json_response(self._job(request).summary())

    async def clip_video(self, request: web.Request) -> web.StreamResponse:
        """The exported MP4, only when it verified (Range requests served, for seeking)."""
        job = self._job(request)
        if not job.playable:
            return self._error(request, 409, "This clip did not verify: it cannot be played.")
        return web.FileResponse(job.export_dir / CLIP_FILE, headers={"Content-Type": "video/mp4"})

    async def clip_archive(self, request: web.Request) -> web.StreamResponse:
        """The whole export directory (bundle, MP4, evidence and its signature) as one tar."""
        job = self._job(request)
        account: Account = request[ACCOUNT]
        if not job.playable:
            return self._error(request, 409, "This clip did not verify: there is no export to hand out.")
        path = await self._run(self.jobs.archive, job)
        await self._audit("clip-download", account.name, job=job.id, requisition=job.request.requisition)
        return web.FileResponse(
            path,
            headers={
                "Content-Type": "application/x-tar",
                "Content-Disposition": f'attachment; filename="{job.id}.tar"',
            },
        )

    # --- holds ----------------------------------------------------------------------------------

    async def holds_page(
        self, request: web.Request, errors: dict[str, str] | None = None, values: dict[str, str] | None = None
    ) -> web.Response:
        """One device's holds (asked to the device), a form to place one, release buttons."""
        devices = await self._run(self.data.devices)
        choices = sorted(f"{d.site}/{d.device}" for d in devices)
        chosen = (
            (values or {}).get("device_ref")
            or request.query.get("device_ref", "")
            or (choices[0] if choices else "")
        )
        holds: list[dict[str, Any]] = []
        device_error = ""
        if chosen in choices:
            site, device = chosen.split("/", 1)
            try:
                holds = await self._run(self.gateway.holds, site, device)
            except DeviceError as error:
                device_error = str(error)
        return self._form_page(
            request,
            "holds.html",
            errors,
            values,
            choices=choices,
            chosen=chosen,
            holds=holds,
            device_error=device_error,
        )

    async def hold_add(self, request: web.Request) -> web.StreamResponse:
        """Place a hold on a device (requisition and officer carried in the signed request)."""
        account: Account = request[ACCOUNT]
        raw = _fields(await request.post())
        form = Form(raw)
        site, device = _split_device(form)
        camera = form.ident("camera")
        requisition = form.reference("requisition")
        start, end = form.time("start"), form.time("end")
        expires = form.time("expires", required=False)
        now = self.clock()
        if start is not None and end is not None and end <= start:
            form.errors["end"] = "end: must be after start"
        if expires is not None and expires <= now:
            form.errors["expires"] = "expires: already in the past"
        if not form.ok:
            return await self.holds_page(request, form.errors, raw)
        body: dict[str, Any] = {
            "camera": camera,
            "start": iso_ms(start or 0.0),
            "end": iso_ms(end or 0.0),
            "requisition": requisition,
            "officer": account.name,
        }
        if expires is not None:
            body["expires"] = iso_ms(expires)
        try:
            hold = await self._run(self.gateway.add_hold, site, device, body)
        except DeviceError as error:
            await self._audit(
                "hold", account.name, outcome="refused", site=site, device=device, detail=str(error)
            )
            return await self.holds_page(request, {"device_ref": str(error)}, raw)
        await self._audit("hold", account.name, outcome="accepted", site=site, device=device, hold=hold)
        raise web.HTTPSeeOther("/holds?" + urlencode({"device_ref": f"{site}/{device}"}))

    async def hold_release(self, request: web.Request) -> web.StreamResponse:
        """Release a hold by id."""
        account: Account = request[ACCOUNT]
        raw = _fields(await request.post())
        form = Form(raw)
        site, device = _split_device(form)
        hold_id = form.text("hold_id", max_length=64)
        if "hold_id" not in form.errors and not hold_id.isdigit():
            # It becomes a path of the signed request: only what a device answers as a hold id (digits).
            form.errors["hold_id"] = f"hold_id: {hold_id!r} is not a hold id"
        if not form.ok:
            return await self.holds_page(request, form.errors, raw)
        try:
            await self._run(self.gateway.release_hold, site, device, hold_id)
        except DeviceError as error:
            await self._audit(
                "release", account.name, outcome="refused", site=site, device=device, detail=str(error)
            )
            return await self.holds_page(request, {"hold_id": f"hold_id: {error}"}, raw)
        await self._audit(
            "release", account.name, outcome="accepted", site=site, device=device, hold_id=hold_id
        )
        raise web.HTTPSeeOther("/holds?" + urlencode({"device_ref": f"{site}/{device}"}))

    # --- audit and users ------------------------------------------------------------------------

    async def audit_page(self, request: web.Request) -> web.Response:
        """The collector's audit log, newest first, with the verification of its whole chain."""
        report = await self._run(verify_log, self.audit.path) if self.audit.path.exists() else None
        entries = await self._run(_tail, self.audit.path, 500)
        return self._page(
            request, "audit.html", report=report, entries=entries, log_path=str(self.audit.path)
        )

    async def users_page(
        self, request: web.Request, errors: dict[str, str] | None = None, values: dict[str, str] | None = None
    ) -> web.Response:
        """Every user, a form to add one, disable/enable."""
        users = await self._run(self.data.users)
        return self._form_page(
            request, "users.html", errors, values, users=users, roles=[r.value for r in Role]
        )

    async def user_add(self, request: web.Request) -> web.StreamResponse:
        """Create a user (admins only)."""
        account: Account = request[ACCOUNT]
        raw = _fields(await request.post())
        errors: dict[str, str] = {}
        name, role_raw, password = raw.get("name", "").strip(), raw.get("role", ""), raw.get("password", "")
        for field_name, check, value in (
            ("name", check_user_name, name),
            ("role", check_role, role_raw),
            ("password", check_password, password),
        ):
            try:
                check(value)
            except AccountError as error:
                errors[field_name] = str(error)
        if not errors:
            try:
                hashed = await self._run(self.passwords.hash, password)
                await self._run(self.data.add_user, Account(name, Role(role_raw).value, hashed, self.clock()))
            except DuplicateError as error:
                errors["name"] = str(error)
        if errors:
            return await self.users_page(request, errors, {"name": name, "role": role_raw})
        await self._audit("user-add", account.name, name=name, role=role_raw)
        raise web.HTTPSeeOther("/users")

    async def user_state(self, request: web.Request) -> web.StreamResponse:
        """Disable (and log out everywhere) or re-enable a user."""
        account: Account = request[ACCOUNT]
        raw = _fields(await request.post())
        name, disabled = raw.get("name", ""), raw.get("disabled") == "1"
        if name == account.name and disabled:
            return await self.users_page(request, {"name": "name: you cannot disable your own account"})
        if not await self._run(self.data.set_disabled, name, disabled):
            return await self.users_page(request, {"name": f"name: no user {name!r}"})
        if disabled:
            await self._run(self.data.delete_sessions_of, name)
        await self._audit("user-disable" if disabled else "user-enable", account.name, name=name)
        raise web.HTTPSeeOther("/users")


# --- helpers ------------------------------------------------------------------------------------


def _redirect(target: str) -> web.Response:
    """A 303 to a path of this site (returned, so that the middleware adds its headers)."""
    return web.Response(status=303, headers={"Location": target})


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


def _safe_next(target: str) -> str:
    """Only a path of this site (no scheme, no `//host`) may be where a login leads."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return ""


def _fields(data: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in data.items()}


def _jpeg(snapshot: Snapshot) -> web.Response:
    return web.Response(body=snapshot.jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})


def _split_camera(form: Form) -> tuple[str, str, str]:
    raw = form.text("camera")
    parts = raw.split("/")
    if raw and len(parts) != 3:
        form.errors["camera"] = f"camera: {raw!r} is not site/device/camera"
    if "camera" in form.errors:
        return "", "", ""
    sub = Form(dict(zip(("site", "device", "camera"), parts, strict=True)))
    site, device, camera = sub.ident("site"), sub.ident("device"), sub.ident("camera")
    if not sub.ok:
        form.errors["camera"] = "camera: " + "; ".join(sub.errors.values())
    return site, device, camera


def _split_device(form: Form) -> tuple[str, str]:
    raw = form.text("device_ref")
    site, _, device = raw.partition("/")
    sub = Form({"site": site, "device": device})
    sub.ident("site"), sub.ident("device")
    if raw and not sub.ok:
        form.errors["device_ref"] = "device_ref: " + "; ".join(sub.errors.values())
    return site, device


def _hours(query: Any, default: float, lowest: float) -> float:
    """A page's `hours` parameter held within `lowest`..MAX_HOURS; `default` when absent or not a number
    (NaN too: it passes every bound and would select nothing)."""
    try:
        hours = float(query.get("hours", default))
    except ValueError:
        return default
    if math.isnan(hours):
        return default
    return min(max(hours, lowest), MAX_HOURS)


def _max_clip_s(status: dict[str, Any] | None, default: float) -> float:
    """The device's longest clip, when its status says it; the console's default otherwise."""
    value = (status or {}).get("max_clip_seconds")
    return float(value) if isinstance(value, int | float) and value > 0 else default


@dataclass(frozen=True)
class Timeline:
    """A camera's last hours on one axis (x in 0..1000): recorded spans, gaps, events, holds."""

    start: float
    end: float
    covered: list[tuple[float, float]]
    gaps: list[tuple[float, float]]
    events: list[tuple[float, str]]
    holds: list[tuple[float, float]]


def _timeline(
    start: float, end: float, segments: list[dict[str, Any]], alerts: list[Alert], holds: list[dict[str, Any]]
) -> Timeline:
    span = max(end - start, 1e-6)

    def x(ts: float) -> float:
        return round(min(max((ts - start) / span, 0.0), 1.0) * 1000, 1)

    merged: list[list[float]] = []
    for row in sorted(segments, key=lambda r: float(r["start_ts"])):
        lo, hi = float(row["start_ts"]), float(row["end_ts"])
        if merged and lo - merged[-1][1] <= 1.0:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    covered = [(x(lo), x(hi)) for lo, hi in merged]
    gaps = [
        (covered[i][1], covered[i + 1][0])
        for i in range(len(covered) - 1)
        if covered[i + 1][0] > covered[i][1]
    ]
    events = [(x(a.start_ts), fmt_time(a.start_ts)) for a in alerts]
    held = [(x(float(h["start_ts"])), x(float(h["end_ts"]))) for h in holds if "start_ts" in h]
    return Timeline(start, end, covered, gaps, events, held)


def _tail(path: Path, count: int) -> list[dict[str, Any]]:
    """The last `count` entries of a JSON-lines log and, when it holds fewer (just after a rotation),
    of its rotated files before it: newest first (a torn line is shown as such)."""
    entries: list[dict[str, Any]] = []
    for file in reversed(log_files(path)):
        entries += _file_tail(file, count - len(entries))
        if len(entries) >= count:
            break
    return entries


def _file_tail(path: Path, count: int) -> list[dict[str, Any]]:
    with path.open("rb") as handle:
        size = handle.seek(0, 2)
        offset = max(0, size - count * 2048)
        handle.seek(offset)
        lines = handle.read().splitlines()
    # A read that starts inside the file starts inside a line: that first piece is not an entry.
    lines = lines[1:] if offset else lines
    lines = lines[-count:]
    entries: list[dict[str, Any]] = []
    for raw in reversed(lines):
        try:
            entry = json.loads(raw)
        except ValueError:
            entry = {"unreadable": raw[:200].decode("utf-8", "replace")}
        entries.append(entry if isinstance(entry, dict) else {"unreadable": str(entry)[:200]})
    return entries
