"""The server's front gate, around every route (API and web UI): Host, Origin/CORS, credentials, body size and pace,
the JSON rule for state changes, the request queue's bound, and the login rate limit.

Gate by default: with a key or a login set, every path needs one, except the few the login page itself loads.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Mapping
from http.cookies import SimpleCookie
from typing import Any

from api.auth import Credentials, LoginLimiter
from api.errors import APIError, error_body, reshape_for

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# what the web UI's login page loads before anyone has logged in (Gradio checks the login on its own routes too)
UI_PUBLIC = ("/", "/login", "/login/", "/logout", "/favicon.ico", "/manifest.json", "/robots.txt", "/theme.css",
             "/gradio_api/theme.css", "/gradio_api/app_id", "/gradio_api/user", "/config", "/config/",
             "/gradio_api/login_check", "/gradio_api/startup-events", "/gradio_api/info")
UI_PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon", "/custom_component/")
# the web UI's own routes: Gradio reads forms and uploads there, and checks its login itself
UI_PREFIXES = ("/gradio_api/", "/login", "/logout", "/assets/", "/static/", "/svelte/", "/theme.css", "/favicon.ico",
               "/manifest.json", "/pwa_icon", "/custom_component/", "/robots.txt")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# POSTs that change nothing, sent without a body by their protocol's clients (Tabby's plugins probe health so)
READ_ONLY_POSTS = ("/v1/health",)


@dataclasses.dataclass(frozen=True)
class Policy:
    """What app.py's options decide about every request."""
    credentials: Credentials = Credentials()
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS   # "*" allows any Host header
    cors_origins: tuple[str, ...] = ()                 # exact origins, e.g. "http://localhost:5173"
    max_body_bytes: int = 4 * 2**20
    body_timeout_s: float = 30.0
    max_queue: int = 32                                # API requests in flight (generating or waiting)
    webui: bool = True                                 # False: "/" is Ollama's banner, not the login page


class Refused(APIError):
    """Raised before the route runs (answered here), or from the body's receive (answered by the error handlers)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        # OpenAI answers a wrong key with type invalid_request_error, code invalid_api_key
        super().__init__(status, message, code=CODES.get(status, "refused"), headers=headers)


def host_name(value: str) -> str:
    """'[::1]:7860' → '::1', 'Example.org:80' → 'example.org'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def is_ui_path(path: str) -> bool:
    return path == "/" or path.startswith(UI_PREFIXES)


def is_public(path: str, webui: bool = True) -> bool:
    if path == "/" and not webui:       # without the web UI, "/" is a protocol's route like any other
        return False
    return path in UI_PUBLIC or path.startswith(UI_PUBLIC_PREFIXES)


CODES = {400: "bad_host", 401: "invalid_api_key", 403: "forbidden_origin", 408: "body_timeout",
         413: "body_too_large", 415: "json_required", 429: "too_many_logins", 503: "queue_full"}


class Guard:
    """ASGI middleware; `scope["app"].state.ui_user(cookies)` (set by app.py) names a logged-in UI user, if any."""

    def __init__(self, app, policy: Policy) -> None:
        self.app, self.policy = app, policy
        self.hosts = {h.lower() for h in policy.allowed_hosts}
        self.logins = LoginLimiter()
        self.in_flight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = False

        async def send_watch(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)
        try:
            await self.check(scope, receive, send_watch)
        except Refused as refused:
            if started:
                raise
            await self.refuse(scope, receive, send, refused)

    async def refuse(self, scope, receive, send, refused: Refused) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        content = error_body(refused.message, refused.kind, None, refused.code)
        reshape = reshape_for(scope)          # TGI, Ollama and llama.cpp clients read their own error shape
        status = refused.status                 # a refusal keeps its status (401, 403, 413 ...) in every shape
        content = reshape(status, content["error"])[1] if reshape else content
        body = json.dumps(content).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in refused.headers.items()]
        if refused.status in (408, 413):
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def check(self, scope, receive, send) -> None:
        headers = {k.lower(): v for k, v in scope["headers"]}
        path = scope["path"].removeprefix(scope.get("root_path", "")) or "/"
        method = scope.get("method", "GET")
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if "*" not in self.hosts and host not in self.hosts:
            # DNS rebinding: a page on evil.example that resolves to 127.0.0.1 still sends Host: evil.example
            raise Refused(400, f"the Host header {host!r} is not a name this server answers to; start it with "
                               f"--allowed-hosts {host} if that name is yours.")
        origin = headers.get(b"origin", b"").decode("latin-1")
        cors = origin in self.policy.cors_origins
        if origin and not cors and not self.same_origin(origin, headers):
            raise Refused(403, f"requests from the web page at {origin!r} are refused: this server answers only its "
                               f"own pages and the origins listed with --cors-origins.")
        if cors and method == "OPTIONS" and b"access-control-request-method" in headers:
            await self.preflight(send, origin)
            return
        authorized = self.authorized(scope, headers)
        if self.policy.credentials.locked and not authorized and not is_public(path, self.policy.webui):
            raise Refused(401, "this server needs a key: send 'Authorization: Bearer KEY' (the server's API key) or "
                               "log in to the web UI.", {"WWW-Authenticate": "Bearer"})
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.policy.max_body_bytes:
            raise Refused(413, f"the request body is {int(length)} bytes; this server takes at most "
                               f"{self.policy.max_body_bytes} (--max-body-mb).")
        if method == "POST" and path in ("/login", "/login/"):
            await self.login(scope, receive, send)
            return
        ui = is_ui_path(path)
        safe = method in SAFE_METHODS or (method == "POST" and path in READ_ONLY_POSTS)
        if not safe and not ui:
            scope = self.json_body(scope, headers, authorized)
        send = self.with_cors(send, origin) if cors else send
        if ui or safe:
            await self.app(scope, self.paced(receive), send)
            return
        if self.in_flight >= self.policy.max_queue:
            raise Refused(503, f"the server is busy: {self.in_flight} requests are already generating or waiting "
                               f"(--max-queue); try again shortly.", {"Retry-After": "5"})
        self.in_flight += 1
        try:
            # read the whole (bounded) body first, so a refusal gets its own status before the route runs
            body = await self.read_body(self.paced(receive))
            await self.app(scope, self.replay(body, receive), send)
        finally:
            self.in_flight -= 1

    @staticmethod
    async def read_body(receive) -> bytes:
        parts = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise Refused(400, "the client left before sending its whole body.")
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(parts)

    @staticmethod
    def replay(body: bytes, receive):
        sent = False

        async def replay_receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()          # afterwards only the disconnect can come
        return replay_receive

    @staticmethod
    def same_origin(origin: str, headers: dict) -> bool:
        netloc = origin.partition("://")[2]
        return bool(netloc) and netloc.lower() == headers.get(b"host", b"").decode("latin-1").lower()

    def authorized(self, scope, headers: dict) -> bool:
        credentials = self.policy.credentials
        if not credentials.locked:
            return False
        if credentials.check_header(headers.get(b"authorization", b"")):
            return True
        ui_user: Callable[[Mapping[str, str]], Any] | None = getattr(getattr(scope.get("app"), "state", None),
                                                                       "ui_user", None)
        if ui_user is None or b"cookie" not in headers:
            return False
        cookies = SimpleCookie()
        try:
            cookies.load(headers[b"cookie"].decode("latin-1"))
        except Exception:  # a malformed cookie header is simply no session
            return False
        return bool(ui_user({k: m.value for k, m in cookies.items()}))

    def json_body(self, scope, headers: dict, authorized: bool) -> dict:
        """A state change needs a JSON body (a cross-site form cannot send one without a CORS preflight) or a key.

        llama.cpp reads any body as JSON and `curl -d` sends a form type: a client that is no browser (no Origin,
        no Sec-Fetch-Site) and sends a body gets that leniency; a browser form, or an empty POST, does not.
        """
        if headers.get(b"content-type", b"").split(b";")[0].strip() == b"application/json":
            return scope
        browser = b"origin" in headers or b"sec-fetch-site" in headers
        has_body = headers.get(b"content-length", b"0") not in (b"0", b"") or b"transfer-encoding" in headers
        if not authorized and (browser or not has_body):
            raise Refused(415, "a request that changes state must send a JSON body (Content-Type: "
                               "application/json), or the server's key.")
        kept = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
        return dict(scope, headers=kept + [(b"content-type", b"application/json")])

    async def preflight(self, send, origin: str) -> None:
        headers = [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin"),
                   (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                   (b"access-control-allow-headers", b"Authorization, Content-Type"),
                   (b"access-control-max-age", b"600"), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    def with_cors(send, origin: str):
        async def cors_send(message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message["headers"] if not k.lower().startswith(b"access-control-")]
                message = dict(message, headers=kept + [(b"access-control-allow-origin", origin.encode()),
                                                        (b"vary", b"Origin")])
            await send(message)
        return cors_send

    def paced(self, receive):
        """The body, at most max_body_bytes of it, each part within body_timeout_s (a half-sent body ends)."""
        received, done = 0, False

        async def paced_receive():
            nonlocal received, done
            if done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.policy.body_timeout_s)
            except asyncio.TimeoutError:
                raise Refused(408, f"the request body did not arrive within {self.policy.body_timeout_s:g} s.") \
                    from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.policy.max_body_bytes:
                    raise Refused(413, f"the request body is over {self.policy.max_body_bytes} bytes, the most this "
                                       f"server takes (--max-body-mb).")
                done = not message.get("more_body", False)
            else:
                done = True
            return message
        return paced_receive

    async def login(self, scope, receive, send) -> None:
        client = (scope.get("client") or ("?", 0))[0]
        wait = self.logins.retry_after(client)
        if wait:
            raise Refused(429, f"too many failed logins from {client}; try again in {wait} s.",
                          {"Retry-After": str(wait)})
        status = 0

        async def watch(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        await self.app(scope, self.paced(receive), watch)
        if status >= 400:
            self.logins.failed(client)
