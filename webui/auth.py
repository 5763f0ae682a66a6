"""Who may use Easel: the logins from the flags, checked on every request by one ASGI middleware.

When any login is configured, `AccessGuard` wraps the whole app, so no route can be forgotten: the
web UI, every Gradio route (files, queue, config, assets), the HTTP API, `/docs` and
`/openapi.json` all refuse anonymous requests. A request proves who it is with HTTP Basic (API
clients, scripts) or with the session cookie that Easel's own `/login` page sets (browsers). The
login page is self-contained (no scripts, no assets), so nothing else needs to stay public for it.

Two surfaces, as in A1111: the API (`--api-auth`) and the web UI (`--gradio-auth`,
`--gradio-auth-path`). Where only one is given it covers both, so turning auth on for one part
never leaves the other open (A1111 leaves the API open with `--gradio-auth` alone).

Passwords are compared in constant time (as SHA-256 digests, so lengths leak nothing either) and
never appear in a response, a log line or `repr`. Browser sessions are signed with itsdangerous and
kept on the server, so signing out ends them everywhere (`Sessions`).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import html
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from http.cookies import SimpleCookie
from typing import Mapping
from typing import Callable
from urllib.parse import parse_qs, quote, unquote, urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from webui.settings import Settings

API_PATHS = ("/sdapi/", "/easel/v1/", "/docs", "/openapi.json")
UI_API_PATHS = ("/easel/v1/canvas/",)  # JSON endpoints the page's own scripts call: the UI's logins apply
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
COOKIE_NAME = "easel-session"
STORAGE_COOKIE = "easel-storage"  # readable by the page: keys its browser storage per sign-in
SESSION_SECONDS = 7 * 24 * 3600
FAILED_LOGIN_DELAY = 0.5  # seconds; slows password guessing without holding a thread
MAX_LOGIN_BODY = 16 * 1024
ANONYMOUS = "anonymous"


class Surface(str, Enum):
    UI = "ui"
    API = "api"


def surface_of(path: str) -> Surface:
    if path.startswith(UI_API_PATHS):
        return Surface.UI
    return Surface.API if path.startswith(API_PATHS) else Surface.UI


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class Accounts:
    """The logins of each surface and the admins; no logins at all means auth is off."""

    ui: Mapping[str, str] = field(default_factory=dict, repr=False)
    api: Mapping[str, str] = field(default_factory=dict, repr=False)
    admins: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> "Accounts":
        ui = dict(settings.ui_credentials or settings.api_credentials)
        api = dict(settings.api_credentials or settings.ui_credentials)
        first = next(iter(settings.ui_credentials or settings.api_credentials), None)
        admins = settings.admin_users or ((first,) if first else ())
        return cls(ui, api, frozenset(admins))

    @property
    def enabled(self) -> bool:
        return bool(self.ui or self.api)

    def users(self, surface: Surface) -> Mapping[str, str]:
        return self.api if surface is Surface.API else self.ui

    def check(self, surface: Surface, user: str, password: str) -> bool:
        """Constant time whether or not the user exists."""
        stored = self.users(surface).get(user)
        ok = hmac.compare_digest(_digest(password), _digest(stored if stored is not None else secrets.token_hex(16)))
        return ok and stored is not None

    def is_admin(self, user: str | None) -> bool:
        return user is not None and user in self.admins


class Throttle:
    """Failed sign-ins counted per account and per address over a sliding window; past a limit, that
    account (or address) is locked until the window has passed, even for the right password, and the
    caller is told how long to wait. Counting is in memory and bounded (oldest names forgotten)."""

    def __init__(self, per_account: int = 5, per_address: int = 20, window: float = 300.0,
                 clock: Callable[[], float] = time.monotonic, capacity: int = 10000):
        self.limits = {"account": per_account, "address": per_address}
        self.window = window
        self.clock = clock
        self.capacity = capacity
        self._lock = threading.Lock()
        self._failures: OrderedDict[tuple[str, str], list[float]] = OrderedDict()

    def _recent(self, key: tuple[str, str], now: float) -> list[float]:
        times = [t for t in self._failures.get(key, []) if now - t < self.window]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def wait(self, user: str, address: str) -> float:
        """Seconds until this account and address may try again (0: now)."""
        now = self.clock()
        with self._lock:
            waits = [self.window - (now - times[0])
                     for kind, name in (("account", user), ("address", address))
                     if len(times := self._recent((kind, name), now)) >= self.limits[kind]]
        return max(waits, default=0.0)

    def failed(self, user: str, address: str) -> None:
        now = self.clock()
        with self._lock:
            for key in (("account", user), ("address", address)):
                self._failures.setdefault(key, []).append(now)
                self._failures.move_to_end(key)
            while len(self._failures) > self.capacity:
                self._failures.popitem(last=False)

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._failures.pop(("account", user), None)


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def same_origin(headers: Headers) -> bool:
    """A form post from this site (or from no site: curl, scripts): its Origin, else its Referer, names
    this host. A sign-in posted from another site is refused (login CSRF)."""
    source = headers.get("origin") or headers.get("referer")
    if not source or source == "null":
        return source != "null"
    return urlsplit(source).netloc.lower() == headers.get("host", "").lower()


class Sessions:
    """Browser sessions: a cookie signed with itsdangerous (key in this process only) that names a session
    the server keeps. Signing out (`revoke`) forgets the session, so its cookie stops working at once
    even if someone kept a copy; so does expiry, and so does a restart."""

    def __init__(self, key: bytes | None = None, max_age: int = SESSION_SECONDS, capacity: int = 10000):
        self._serializer = URLSafeTimedSerializer(key or secrets.token_bytes(32), salt="easel-session")
        self.max_age = max_age
        self._capacity = capacity
        self._lock = threading.Lock()
        self._active: OrderedDict[str, tuple[str, float]] = OrderedDict()  # session id -> (user, expiry)

    def issue(self, user: str, now: float | None = None) -> str:
        sid = secrets.token_urlsafe(18)
        with self._lock:
            self._active[sid] = (user, (now or time.time()) + self.max_age)
            while len(self._active) > self._capacity:  # the oldest sessions go first
                self._active.popitem(last=False)
        return self._serializer.dumps({"u": user, "s": sid})

    def _read(self, token: str) -> tuple[str, str] | None:
        try:
            data = self._serializer.loads(token, max_age=self.max_age)
        except (BadSignature, UnicodeError, ValueError, TypeError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("u"), str) or not isinstance(data.get("s"), str):
            return None
        return data["u"], data["s"]

    def verify(self, token: str, now: float | None = None) -> str | None:
        """The user of a live session, or None if the token is forged, damaged, expired or signed out."""
        read = self._read(token)
        if read is None:
            return None
        user, sid = read
        with self._lock:
            active = self._active.get(sid)
            if active is None or active[0] != user:
                return None
            if active[1] < (now or time.time()):
                del self._active[sid]
                return None
        return user

    def revoke(self, token: str) -> None:
        read = self._read(token)
        if read is not None:
            with self._lock:
                self._active.pop(read[1], None)


def basic_credentials(headers: Headers) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic` header; the password may contain ':'."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def session_cookie(headers: Headers) -> str | None:
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header is simply no session
        return None
    morsel = cookie.get(COOKIE_NAME)
    return morsel.value if morsel else None


class Gate:
    """Answers "who is this request, and may they use this surface?"; shared by the middleware,
    Gradio's `auth_dependency` and the API's caller dependency."""

    def __init__(self, accounts: Accounts, sessions: Sessions | None = None, throttle: Throttle | None = None):
        self.accounts = accounts
        self.sessions = sessions or Sessions()
        self.throttle = throttle or Throttle()

    @property
    def enabled(self) -> bool:
        return self.accounts.enabled

    def identify(self, headers: Headers, surface: Surface, address: str = "unknown") -> tuple[str | None, bool]:
        """(user allowed on this surface or None, whether wrong credentials were offered). HTTP Basic
        counts against the sign-in throttle like the form does (see `locked`)."""
        creds = basic_credentials(headers)
        if creds is not None:
            if self.throttle.wait(creds[0], address):
                return None, True
            ok = self.accounts.check(surface, *creds)
            if ok:
                self.throttle.succeeded(creds[0])
            else:
                self.throttle.failed(creds[0], address)
            return (creds[0] if ok else None), not ok
        token = session_cookie(headers)
        if token is not None:
            user = self.sessions.verify(token)
            if user is not None and user in self.accounts.users(surface):
                return user, False
        return None, False

    def user_of(self, conn: HTTPConnection) -> str | None:
        """The signed-in user of a request, or None (also None when auth is off)."""
        if not self.enabled:
            return None
        return self.identify(conn.headers, surface_of(conn.url.path))[0]

    def ui_user(self, conn: HTTPConnection) -> str | None:
        """For Gradio's `auth_dependency`: the user every UI event is attributed to."""
        return self.identify(conn.headers, Surface.UI)[0] if self.enabled else None


class AccessGuard:
    """ASGI middleware: every HTTP and WebSocket request must be signed in; serves /login and /logout."""

    def __init__(self, app: ASGIApp, gate: Gate, files: "OutputFiles | None" = None):
        self.app = app
        self.gate = gate
        self.files = files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if scope["type"] == "http" and path in (LOGIN_PATH, LOGOUT_PATH):
            response = await (self._login(scope, receive) if path == LOGIN_PATH else self._logout(scope))
            await response(scope, receive, send)
            return
        headers = Headers(scope=scope)
        address = client_address(scope)
        creds = basic_credentials(headers)
        wait = self.gate.throttle.wait(creds[0], address) if creds else 0.0  # locked before this attempt
        user, wrong = self.gate.identify(headers, surface_of(path), address)
        if user is not None:
            if self.files is not None and not self.files.may_read(path, user, self.gate.accounts.is_admin(user)):
                await JSONResponse({"error": "NotFound", "detail": "no such file"}, status_code=404)(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if wait and scope["type"] == "http":
            await throttled(wait)(scope, receive, send)
            return
        if wrong:
            await asyncio.sleep(FAILED_LOGIN_DELAY)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "not signed in"})
            return
        await self._refuse(scope, headers, path)(scope, receive, send)

    @staticmethod
    def _refuse(scope: Scope, headers: Headers, path: str) -> Response:
        wants_page = scope.get("method") in ("GET", "HEAD") and "text/html" in headers.get("accept", "")
        if wants_page and not path.startswith(("/sdapi/", "/easel/v1/", "/openapi.json")):
            query = scope.get("query_string", b"").decode("latin-1")
            target = path + (f"?{query}" if query else "")
            return RedirectResponse(f"{LOGIN_PATH}?next={quote(target, safe='')}", status_code=303)
        return JSONResponse(
            {"error": "Unauthorized", "detail": "sign in: HTTP Basic auth, or the form at /login"},
            status_code=401, headers={"WWW-Authenticate": 'Basic realm="Easel", charset="UTF-8"'},
        )

    async def _login(self, scope: Scope, receive: Receive) -> Response:
        conn = HTTPConnection(scope)
        if scope.get("method") != "POST":
            return login_page(safe_next(conn.query_params.get("next")))
        headers = Headers(scope=scope)
        if not same_origin(headers):
            return login_page("/", problem="This sign-in form was sent from another site; sign in here.",
                              status=403)
        form = parse_qs((await _read_body(receive, MAX_LOGIN_BODY)).decode("utf-8", "replace"))
        user = form.get("username", [""])[0].strip()
        password = form.get("password", [""])[0]
        target = safe_next(form.get("next", ["/"])[0])
        address = client_address(scope)
        wait = self.gate.throttle.wait(user, address)
        if wait:
            return login_page(target, user=user, status=429, retry=wait,
                              problem=f"Too many failed sign-ins; try again in {int(wait) + 1} seconds.")
        if not self.gate.accounts.check(Surface.UI, user, password):
            self.gate.throttle.failed(user, address)
            await asyncio.sleep(FAILED_LOGIN_DELAY)
            return login_page(target, user=user, failed=True)
        self.gate.throttle.succeeded(user)
        response = RedirectResponse(target, status_code=303)
        secure = scope.get("scheme") == "https"
        response.set_cookie(COOKIE_NAME, self.gate.sessions.issue(user), max_age=self.gate.sessions.max_age,
                            httponly=True, samesite="lax", secure=secure, path="/")
        # the page's own browser storage (the outpaint canvas) is keyed by this, new at every sign-in
        response.set_cookie(STORAGE_COOKIE, secrets.token_urlsafe(12), max_age=self.gate.sessions.max_age,
                            samesite="lax", secure=secure, path="/")
        return response

    async def _logout(self, scope: Scope) -> Response:
        token = session_cookie(Headers(scope=scope))
        if token is not None:
            self.gate.sessions.revoke(token)  # the cookie is dead on the server too, not only deleted
        response = RedirectResponse(LOGIN_PATH, status_code=303)
        response.delete_cookie(COOKIE_NAME, path="/")
        response.delete_cookie(STORAGE_COOKIE, path="/")
        # the next person on this browser must not see this user's canvas or prompts (where browsers honour it)
        response.headers["Clear-Site-Data"] = '"storage"'
        return response


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The request body, cut at `limit` bytes (a login form is tiny)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > limit or not message.get("more_body", False):
            return body[:limit]


def safe_next(target: str | None) -> str:
    """Only same-site paths: never let ?next= send a user to another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def throttled(wait: float) -> JSONResponse:
    """The answer to a caller whose account or address is locked after too many failed sign-ins."""
    seconds = int(wait) + 1
    return JSONResponse({"error": "TooManyRequests",
                         "detail": f"too many failed sign-ins; try again in {seconds} seconds"},
                        status_code=429, headers={"Retry-After": str(seconds)})


class OutputFiles:
    """Which output files a signed-in user may fetch through Gradio's file routes: their own (an admin's:
    all). Files outside the outputs folder are Gradio's business (its own checks apply)."""

    PREFIXES = ("/gradio_api/file=", "/gradio_api/file/")

    def __init__(self, outputs: Path, owner_of: Callable[[Path], str | None]):
        self.guarded: list[tuple[Path, Callable[[Path], str | None]]] = [(outputs.resolve(), owner_of)]

    def guard(self, folder: Path, owner_of: Callable[[Path], str | None]) -> None:
        """Another folder whose files belong to someone (the gallery's thumbnails)."""
        self.guarded.append((folder.resolve(), owner_of))

    def may_read(self, path: str, user: str, admin: bool) -> bool:
        prefix = next((p for p in self.PREFIXES if path.startswith(p)), None)
        if prefix is None or admin:
            return True
        target = Path(unquote(path[len(prefix):]))
        try:
            resolved = target.resolve()
        except (OSError, RuntimeError):
            return False
        for folder, owner_of in self.guarded:
            if resolved.is_relative_to(folder):
                return owner_of(resolved) == user
        return True


def login_page(target: str, user: str = "", failed: bool = False, problem: str = "", status: int | None = None,
               retry: float = 0.0) -> HTMLResponse:
    text = problem or ("Wrong user name or password." if failed else "")
    message = f'<p class="err" role="alert">{html.escape(text)}</p>' if text else ""
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Easel: sign in</title>
<style>
body{{font-family:system-ui,sans-serif;background:#111827;color:#e5e7eb;display:grid;place-items:center;min-height:100vh;margin:0}}
form{{background:#1f2937;padding:2rem;border-radius:.75rem;display:grid;gap:.75rem;min-width:18rem}}
input{{padding:.5rem;border-radius:.4rem;border:1px solid #4b5563;background:#111827;color:inherit}}
button{{padding:.6rem;border:0;border-radius:.4rem;background:#f97316;color:#fff;font-weight:600;cursor:pointer}}
.err{{color:#fca5a5;margin:0}}
</style></head>
<body><form method="post" action="{LOGIN_PATH}">
<h1>Easel</h1>{message}
<label>User name <input name="username" autocomplete="username" value="{html.escape(user)}" required autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<input type="hidden" name="next" value="{html.escape(target)}">
<button type="submit">Sign in</button>
</form></body></html>"""
    headers = {"Retry-After": str(int(retry) + 1)} if retry else None
    return HTMLResponse(body, status_code=status or (401 if failed else 200), headers=headers)
