"""What every route shares: the Engine and Settings (kept on app.state), which model answers, its parameters."""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Annotated, Any

from fastapi import Depends, Request

from api.errors import APIError
from backend.engine import Engine, LoadedModel, NoModelLoaded
from backend.generate import GenerationParams
from backend.settings import GENERATION_KEYS, Settings


@dataclasses.dataclass
class Service:
    engine: Engine
    settings: Settings

    def resolve(self, requested: str | None) -> LoadedModel:
        """The loaded model, which serves every request whatever its `model` field says, with one exception.

        OpenAI clients always send a model name and editor plugins send names of their own ("gpt-3.5-turbo",
        "starcoder", "deepseek-coder"), so a name we do not know is served by the loaded model (and the response
        names the model that answered). A name that is another model folder in models/ means the client wanted
        that model: 404, since the API never swaps the model under the web UI's user (load it explicitly with
        /v1/internal/model/load). `api_strict_model: true` in settings.yaml makes every other name a 404.
        """
        loaded = self.engine.loaded
        if loaded is None:
            raise NoModelLoaded("no model is loaded; load one in the web UI's Model tab or with "
                                "POST /v1/internal/model/load {\"model_name\": ...}.")
        if requested and requested != loaded.name:
            available = self.engine.list_models()
            if requested in available:
                raise APIError(404, f"model {requested!r} is available but not loaded (the loaded model is "
                                    f"{loaded.name!r}); load it with POST /v1/internal/model/load, or send "
                                    f"model={loaded.name!r}.", "model", "model_not_found")
            if self.settings.defaults.get("api_strict_model"):
                raise APIError(404, f"unknown model {requested!r}; the loaded model is {loaded.name!r} "
                                    f"(available: {', '.join(available)}).", "model", "model_not_found")
        return loaded

    @staticmethod
    def affinity(request: Request, file: str | None) -> str | None:
        """Who asks about which file, for a remote engine's replica choice (the same client and file keep
        hitting one server's prefix cache); None where the request names no file, and the engine keys by the
        prompt's opening tokens instead. The client is its credential (hashed) or, without one, its address."""
        if not file:
            return None
        credential = request.headers.get("authorization")
        client = (hashlib.sha256(credential.encode()).hexdigest()[:16] if credential
                  else request.client.host if request.client else "")
        return f"{client}\0{file}"

    def saved(self, loaded: LoadedModel) -> dict[str, Any]:
        return self.settings.for_model(loaded.name, loaded.info.defaults)

    def params(self, loaded: LoadedModel, body: Any, max_tokens: int | None, max_name: str = "max_tokens",
               **overrides: Any) -> GenerationParams:
        """The model's saved settings, overridden by what the request sets."""
        if max_tokens is not None and max_tokens < 1:
            raise APIError(400, f"{max_name} must be at least 1, got {max_tokens}.", max_name)
        saved = self.saved(loaded)
        values = {k: saved[k] for k in GENERATION_KEYS if k in saved}
        requested = {k: getattr(body, k, None) for k in GENERATION_KEYS} | overrides
        requested["max_new_tokens"] = max_tokens
        values.update({k: v for k, v in requested.items() if v is not None})
        return GenerationParams.from_dict(values)


def get_service(request: Request) -> Service:
    # the app that handles the request, also when it is mounted inside the web UI's app
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
