"""The HTTP front door: `create_api` mounts one router per protocol behind the guard and the error handlers."""
from __future__ import annotations

from fastapi import FastAPI

from api import internal, llamacpp, openai
from api.auth import Credentials, api_warning
from api.errors import add_error_handlers
from api.guard import Guard, Policy
from api.service import Service
from backend.engine import Engine
from backend.settings import Settings

__all__ = ["ROUTERS", "Credentials", "Policy", "api_warning", "create_api", "guard"]

# a new protocol (TGI, Ollama, Tabby, ...) is one module with an APIRouter, and one entry here
ROUTERS = (openai.router, llamacpp.router, internal.router)


def guard(app: FastAPI, policy: Policy) -> FastAPI:
    """Put the guard around every route of `app`, including apps mounted on it later (the web UI)."""
    app.add_middleware(Guard, policy=policy)
    add_error_handlers(app)
    return app


def create_api(engine: Engine, settings: Settings, api_key: str | None = None, policy: Policy | None = None,
               routers: bool = True) -> FastAPI:
    """The API app; app.py mounts the web UI onto it (gr.mount_gradio_app) or serves it alone (--nowebui).

    `routers=False`: the guard and error handlers only, for a web UI served without the API.
    """
    app = FastAPI(title="StarCoder WebUI API", docs_url="/v1/docs", openapi_url="/v1/openapi.json", redoc_url=None)
    app.state.service = Service(engine, settings)
    guard(app, policy or Policy(Credentials(api_key)))
    for router in ROUTERS if routers else ():
        app.include_router(router)
    return app
