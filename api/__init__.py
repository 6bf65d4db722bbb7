"""The HTTP front door: `create_api` mounts one router per protocol behind the guard and the error handlers."""
from __future__ import annotations

import dataclasses

from fastapi import FastAPI

from api import internal, llamacpp, ollama, openai, tabby, tgi
from api.auth import Credentials, api_warning
from api.errors import add_error_handlers
from api.guard import Guard, Policy
from api.service import Service
from backend.engine import Engine
from backend.settings import Settings

__all__ = ["ROUTERS", "Credentials", "Policy", "api_warning", "create_api", "guard"]

# a new protocol is one module with an APIRouter, and one entry here; Tabby's /v1/completions comes before
# OpenAI's, which it passes on to unless the body is Tabby's
ROUTERS = (tabby.router, openai.router, llamacpp.router, internal.router, tgi.router, ollama.router)


def guard(app: FastAPI, policy: Policy) -> FastAPI:
    """Put the guard around every route of `app`, including apps mounted on it later (the web UI)."""
    app.add_middleware(Guard, policy=policy)
    add_error_handlers(app)
    return app


def create_api(engine: Engine, settings: Settings, api_key: str | None = None, policy: Policy | None = None,
               routers: bool = True, webui: bool = False) -> FastAPI:
    """The API app; app.py mounts the web UI onto it (gr.mount_gradio_app, `webui`) or serves it alone
    (--nowebui: then GET / answers as Ollama does, for clients that probe it).

    `routers=False`: the guard and error handlers only, for a web UI served without the API.
    """
    app = FastAPI(title="StarCoder WebUI API", docs_url="/v1/docs", openapi_url="/v1/openapi.json", redoc_url=None)
    app.state.service = Service(engine, settings)
    guard(app, dataclasses.replace(policy or Policy(Credentials(api_key)), webui=webui))
    for router in (ROUTERS + (() if webui else (ollama.root_router,))) if routers else ():
        app.include_router(router)
    return app
