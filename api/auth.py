"""The API's gate: the bearer key on the guarded paths, JSON bodies, and the warning for an open network port."""
from __future__ import annotations

import hmac

from fastapi.responses import JSONResponse

from api.errors import error_body

# what the API key protects: every protocol's routes (OpenAI and TGW /v1/, llama.cpp, TGI, Ollama /api/, Tabby
# /v1/); a web UI mounted on "/" stays open, but POST / is TGI's, and GET / Ollama's when no web UI is served
GUARDED_PATHS = ("/v1/", "/infill", "/completion", "/generate", "/info", "/health", "/props", "/models/", "/api/")


def api_warning(listen: bool, api_key: str | None) -> str | None:
    """The warning app.py prints when the server listens on the network with no API key, else None."""
    if listen and not api_key:
        return ("WARNING: the API listens on the network without an API key: anyone who can reach this port can "
                "generate with, load and unload models. Start with --api-key KEY (clients then send "
                "'Authorization: Bearer KEY'), or leave out --listen to serve only this machine.")
    return None


class Gate:
    """ASGI middleware for the API's paths: the bearer key (checked before the body is read), and JSON bodies.

    llama.cpp reads every body as JSON whatever its Content-Type, and `curl -d` sends a form type; so do we, but
    not for browsers (they send Origin): a web page may post a form or text/plain to 127.0.0.1 without asking,
    while a JSON body needs a CORS preflight, which this API never grants.
    """

    def __init__(self, app, key: str | None, guard_root: bool = False) -> None:
        self.app, self.key, self.guard_root = app, key.encode() if key else None, guard_root

    async def __call__(self, scope, receive, send) -> None:
        # a lifespan scope has no path; failing on it would skip the mounted web UI's start-up (its queue)
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # mounted under a prefix (the web UI's app mounting this one), the path still carries the prefix
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        root = path == "/" and (self.guard_root or scope["method"] not in ("GET", "HEAD"))
        if not path.startswith(GUARDED_PATHS) and not root:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.key is not None:
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                response = JSONResponse(
                    error_body("missing or wrong API key: send the header 'Authorization: Bearer KEY' with the "
                               "key the server was started with (--api-key).", "invalid_request_error",
                               code="invalid_api_key"), status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        if (scope["method"] == "POST" and b"origin" not in headers
                and not headers.get(b"content-type", b"").startswith(b"application/json")):
            kept = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = dict(scope, headers=kept + [(b"content-type", b"application/json")])
        await self.app(scope, receive, send)
