"""The HTTP front door: `create_api` mounts one router per protocol behind the auth gate and the error handlers."""
from __future__ import annotations

from fastapi import FastAPI

from api import internal, llamacpp, ollama, openai, tabby, tgi
from api.auth import Gate, api_warning
from api.errors import add_error_handlers
from api.service import Service
from backend.engine import Engine
from backend.settings import Settings

__all__ = ["ROUTERS", "api_warning", "create_api"]

# a new protocol is one module with an APIRouter, and one entry here; Tabby's /v1/completions comes before
# OpenAI's, which it passes on to unless the body is Tabby's
ROUTERS = (tabby.router, openai.router, llamacpp.router, internal.router, tgi.router, ollama.router)


def create_api(engine: Engine, settings: Settings, api_key: str | None = None, webui: bool = False) -> FastAPI:
    """The API app; app.py mounts the web UI onto it (gr.mount_gradio_app, `webui`) or serves it alone
    (--nowebui: then GET / answers as Ollama does, for clients that probe it)."""
    app = FastAPI(title="StarCoder WebUI API", docs_url="/v1/docs", openapi_url="/v1/openapi.json", redoc_url=None)
    app.state.service = Service(engine, settings)
    app.add_middleware(Gate, key=api_key, guard_root=not webui)
    add_error_handlers(app)
    for router in ROUTERS + (() if webui else (ollama.root_router,)):
        app.include_router(router)
    return app
