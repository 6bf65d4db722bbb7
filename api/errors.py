"""The API's one error shape (OpenAI's) and the handlers that turn every exception into it."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Iterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.engine import NoModelLoaded
from backend.errors import UserError
from backend.generate import GenerationError, GenerationParams
from backend.loader import ModelLoadError

log = logging.getLogger(__name__)
GENERATION_FIELDS = {f.name for f in dataclasses.fields(GenerationParams)}


class APIError(Exception):
    """An error meant for the client, answered in OpenAI's JSON shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = dict(headers or {})


class ClientGone(Exception):
    """The client disconnected; its generation is cancelled and nobody reads the answer."""


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def describe_error(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) for any exception: the API's and the backend's user errors are the client's to
    fix (4xx, or 503 while no model is loaded); anything else is a bug, logged and answered with a 500."""
    if isinstance(exc, APIError):
        return exc.status, error_body(exc.message, exc.kind, exc.param, exc.code), exc.headers
    if isinstance(exc, NoModelLoaded):
        # the openai client retries 503s by default; retrying cannot help until someone loads a model
        return 503, error_body(str(exc), "server_error", code="model_not_loaded"), {"x-should-retry": "false"}
    if isinstance(exc, GenerationError):
        # its messages begin with the parameter's name ("temperature must be ≥ 0")
        first = str(exc).split(" ", 1)[0]
        param = first if first in GENERATION_FIELDS and first != "max_new_tokens" else None
        return getattr(exc, "http_status", 400), error_body(str(exc), "invalid_request_error", param), {}
    if isinstance(exc, ModelLoadError):
        return 400, error_body(str(exc), "invalid_request_error", "model_name", "model_load_failed"), {}
    if isinstance(exc, UserError):
        # an error may carry its own status (a remote engine: 503 unreachable, the upstream's 4xx passed on)
        status = getattr(exc, "http_status", 400)
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return status, error_body(str(exc), kind), {"Retry-After": "5"} if status == 503 else {}
    log.error("API request failed", exc_info=exc)
    return 500, error_body(f"internal server error: {type(exc).__name__}: {exc}", "server_error"), {}


def error_response(exc: Exception) -> JSONResponse:
    status, body, headers = describe_error(exc)
    return JSONResponse(body, status_code=status, headers=headers)


async def _on_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ClientGone):
        return Response(status_code=499)
    return error_response(exc)


def describe_invalid(exc: RequestValidationError) -> tuple[int, dict[str, Any]]:
    err = exc.errors()[0] if exc.errors() else {}
    if err.get("type") == "json_invalid":
        return 400, error_body(f"the body is not valid JSON: {err.get('ctx', {}).get('error', '')}",
                               "invalid_request_error")
    if tuple(err.get("loc", ())) == ("body",):
        return 400, error_body("the body must be a JSON object.", "invalid_request_error")
    param = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or None
    message = f"{param}: {err.get('msg', 'invalid value')}" if param else err.get("msg", "invalid request")
    return 400, error_body(message, "invalid_request_error", param)


async def _on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    status, body = describe_invalid(exc)
    return JSONResponse(body, status_code=status)


async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code, headers=exc.headers)


def add_error_handlers(app: FastAPI) -> None:
    """The one place where errors become responses: routes raise, never build error bodies themselves."""
    # Starlette picks a handler by walking the exception's classes, so UserError covers every backend error
    for exc_type in (APIError, UserError, ClientGone, Exception):
        app.add_exception_handler(exc_type, _on_error)
    app.add_exception_handler(RequestValidationError, _on_invalid)
    app.add_exception_handler(StarletteHTTPException, _on_http)


# (status, OpenAI's error object) -> (status, the protocol's own error body)
Reshape = Callable[[int, dict[str, Any]], tuple[int, Any]]


def shaped(exc: Exception, reshape: Reshape) -> tuple[int, Any, dict[str, str]]:
    """(status, body, headers) for `exc` in a protocol's own error shape."""
    if isinstance(exc, RequestValidationError):
        status, body = describe_invalid(exc)
        headers: dict[str, str] = {}
    else:
        status, body, headers = describe_error(exc)
    status, content = reshape(status, body["error"])
    return status, content, headers


def reshape_for(scope) -> Reshape | None:
    """The error shape of the protocol route `scope` is headed for (None: OpenAI's, the default)."""
    from starlette.routing import Match

    def routes(router) -> Iterator[Any]:
        for route in getattr(router, "routes", ()):
            inner = getattr(route, "original_router", None)   # an included router (create_api adds no prefix)
            yield from routes(inner) if inner is not None else (route,)

    for route in routes(getattr(scope.get("app"), "router", None)):
        reshape = getattr(route, "protocol_error", None)
        if reshape is not None and route.matches(scope)[0] is not Match.NONE:
            return reshape
    return None


def protocol_route(reshape: Reshape) -> type[APIRoute]:
    """An APIRoute class whose errors, invalid bodies included, answer in a protocol's own shape (TGI's
    {"error", "error_type"}, Ollama's {"error"}); a router passes it as route_class."""
    class ShapedRoute(APIRoute):
        protocol_error = staticmethod(reshape)      # the guard answers refusals on this route in the same shape

        def get_route_handler(self):
            handler = super().get_route_handler()

            async def shaped_handler(request: Request) -> Response:
                try:
                    return await handler(request)
                except ClientGone:
                    return Response(status_code=499)
                except Exception as exc:
                    status, content, headers = shaped(exc, reshape)
                    return JSONResponse(content, status_code=status, headers=headers)
            return shaped_handler
    return ShapedRoute
