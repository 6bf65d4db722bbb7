"""The HTTP front door: `create_api` mounts one router per protocol behind the auth gate and the error handlers."""
from __future__ import annotations

from fastapi import FastAPI

from api import internal, llamacpp, openai
from api.auth import Gate, api_warning
from api.errors import add_error_handlers
from api.service import Service
from backend.engine import Engine
from backend.settings import Settings

__all__ = ["ROUTERS", "api_warning", "create_api"]

# a new protocol (TGI, Ollama, Tabby, ...) is one module with an APIRouter, and one entry here
ROUTERS = (openai.router, llamacpp.router, internal.router)


def create_api(engine: Engine, settings: Settings, api_key: str | None = None) -> FastAPI:
    """The API app; app.py mounts the web UI onto it (gr.mount_gradio_app) or serves it alone (--nowebui)."""
    app = FastAPI(title="StarCoder WebUI API", docs_url="/v1/docs", openapi_url="/v1/openapi.json", redoc_url=None)
    app.state.service = Service(engine, settings)
    app.add_middleware(Gate, key=api_key)
    add_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app
