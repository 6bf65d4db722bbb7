"""The HTTP API: OpenAI-compatible completions (real FIM) and chat, llama.cpp's /infill, model control, auth."""
from __future__ import annotations

import dataclasses
import functools
import hmac
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import schemas
from api.schemas import APIError, ClientGone, error_body, error_response
from api.streaming import GenerationRun, event_stream
from backend import prompts
from backend.engine import Engine, LoadedModel, NoModelLoaded
from backend.generate import Chunk, GenerationError, GenerationParams
from backend.loader import ModelLoadError
from backend.settings import GENERATION_KEYS, LOAD_KEYS, Settings

GUARDED_PATHS = ("/v1/", "/infill")             # what the API key protects; a web UI mounted on "/" stays open


def api_warning(listen: bool, api_key: str | None) -> str | None:
    """The warning app.py prints when the server listens on the network with no API key, else None."""
    if listen and not api_key:
        return ("WARNING: the API listens on the network without an API key: anyone who can reach this port can "
                "generate with, load and unload models. Start with --api-key KEY (clients then send "
                "'Authorization: Bearer KEY'), or leave out --listen to serve only this machine.")
    return None


class _Gate:
    """ASGI middleware for the API's paths: the bearer key (checked before the body is read), and JSON bodies.

    llama.cpp reads every body as JSON whatever its Content-Type, and `curl -d` sends a form type; so do we, but
    not for browsers (they send Origin): a web page may post a form or text/plain to 127.0.0.1 without asking,
    while a JSON body needs a CORS preflight, which this API never grants.
    """

    def __init__(self, app, key: str | None) -> None:
        self.app, self.key = app, key.encode() if key else None

    async def __call__(self, scope, receive, send) -> None:
        # a lifespan scope has no path; failing on it would skip the mounted web UI's start-up (its queue)
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # mounted under a prefix (the web UI's app mounting this one), the path still carries the prefix
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if not path.startswith(GUARDED_PATHS):
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


def _count(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False)) if text else 0


def _prompt_text(prompt: Any, tokenizer) -> str:
    """OpenAI's prompt forms: a string, or one string / one token list in a list (token ids are decoded)."""
    if isinstance(prompt, str):
        return prompt
    if prompt and all(isinstance(p, int) for p in prompt):
        return tokenizer.decode(prompt)
    if len(prompt) == 1:
        return _prompt_text(prompt[0], tokenizer)
    raise APIError(400, "only one prompt per request is supported; send several requests instead.", "prompt")


def _extra_context(chunks: list[schemas.ExtraChunk], tokenizer) -> str:
    """llama.cpp's input_extra as StarCoder saw other files in training: `<filename>path\\ncode`, before the prefix."""
    marker = "<filename>" if tokenizer.convert_tokens_to_ids("<filename>") not in (None, tokenizer.unk_token_id) else ""
    parts = []
    for chunk in chunks:
        if chunk.text or chunk.filename:
            text = chunk.text if chunk.text.endswith("\n") or not chunk.text else chunk.text + "\n"
            parts.append(f"{marker}{chunk.filename}\n{text}" if marker else text)
    return "".join(parts)


@dataclasses.dataclass
class _Service:
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

    def saved(self, loaded: LoadedModel) -> dict[str, Any]:
        return self.settings.for_model(loaded.name)

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

    @staticmethod
    def context(loaded: LoadedModel, params: GenerationParams) -> int:
        return min(params.context_length or loaded.info.n_positions, loaded.info.n_positions)

    def check_fit(self, loaded: LoadedModel, params: GenerationParams, prompt_tokens: int, param: str) -> None:
        """OpenAI's rule: a prompt that cannot fit with max_tokens is a 400, not silently shortened."""
        context = self.context(loaded, params)
        if prompt_tokens + params.max_new_tokens > context:
            raise APIError(400, f"this model's context is {context} tokens, but {prompt_tokens + params.max_new_tokens}"
                                f" were requested: {prompt_tokens} in the prompt and {params.max_new_tokens} for the "
                                f"completion (max_tokens); shorten the prompt or lower max_tokens.",
                           param, "context_length_exceeded")


def create_api(engine: Engine, settings: Settings, api_key: str | None = None) -> FastAPI:
    """The API app; app.py mounts the web UI onto it (gr.mount_gradio_app) or serves it alone (--nowebui)."""
    app = FastAPI(title="StarCoder WebUI API", docs_url="/v1/docs", openapi_url="/v1/openapi.json", redoc_url=None)
    app.add_middleware(_Gate, key=api_key)
    svc = _Service(engine, settings)

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ClientGone):
            return Response(status_code=499)
        return error_response(exc)

    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {}
        if err.get("type") == "json_invalid":
            return JSONResponse(error_body(f"the body is not valid JSON: {err.get('ctx', {}).get('error', '')}",
                                           "invalid_request_error"), status_code=400)
        if tuple(err.get("loc", ())) == ("body",):
            return JSONResponse(error_body("the body must be a JSON object.", "invalid_request_error"), status_code=400)
        param = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or None
        message = f"{param}: {err.get('msg', 'invalid value')}" if param else err.get("msg", "invalid request")
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code, headers=exc.headers)

    for exc_type in (APIError, GenerationError, NoModelLoaded, ClientGone, Exception):
        app.add_exception_handler(exc_type, on_error)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(StarletteHTTPException, on_http)

    def model_card(name: str) -> dict[str, Any]:
        loaded = engine.loaded
        card = {"id": name, "object": "model", "created": 0, "owned_by": "local",
                "loaded": loaded is not None and loaded.name == name}
        if card["loaded"]:
            card["context_length"] = loaded.info.n_positions
        return card

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        """The loaded model first (clients that take the first entry get it), then the other model folders."""
        loaded = engine.loaded
        names = ([loaded.name] if loaded else []) + [n for n in engine.list_models() if not loaded or n != loaded.name]
        return {"object": "list", "data": [model_card(n) for n in names]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        loaded = engine.loaded
        if model_id not in engine.list_models() and not (loaded and loaded.name == model_id):
            raise APIError(404, f"no model {model_id!r}; see GET /v1/models.", "model", "model_not_found")
        return model_card(model_id)

    @app.post("/v1/completions")
    async def completions(body: schemas.CompletionRequest, request: Request) -> Any:
        """Text completion; with `suffix`, real fill-in-the-middle that answers only the middle."""
        loaded = svc.resolve(body.model)
        if body.n != 1 or (body.best_of or 1) != 1:
            raise APIError(400, "only n=1 (and best_of=1) is supported: the model generates one sequence at a "
                                "time; send several requests instead.", "n")
        if body.logprobs:
            raise APIError(400, "logprobs are not supported by this server; leave logprobs out.", "logprobs")
        tok = loaded.tokenizer
        prompt = _prompt_text(body.prompt, tok)
        params = svc.params(loaded, body, body.max_tokens)
        suffix = body.suffix
        if suffix is None:
            svc.check_fit(loaded, params, _count(tok, prompt), "prompt")
            start = functools.partial(engine.complete, prompt, params)
        else:
            svc.check_fit(loaded, params, _count(tok, prompt) + _count(tok, suffix) + 3, "prompt")
            order = body.fim_order or svc.saved(loaded).get("fim_order", "psm")
            start = functools.partial(engine.infill, prompt, suffix, params, order)
        run = GenerationRun(request, lambda cancel: start(cancel=cancel))
        rid, name, echo = schemas.new_id("cmpl"), loaded.name, prompt if body.echo else ""
        first = await run.first()
        if not body.stream:
            chunks = await run.rest(first)
            return schemas.completion(rid, name, echo + "".join(c.text for c in chunks), chunks[-1])
        with_usage = bool(body.stream_options and body.stream_options.include_usage)
        return event_stream(
            run, first, lambda c: [schemas.completion_chunk(rid, name, c.text, c.finish_reason)],
            [schemas.completion_chunk(rid, name, echo, None)] if echo else [],
            lambda last: [schemas.usage_chunk(rid, name, "text_completion", last)] if with_usage else [])

    @app.post("/v1/chat/completions")
    async def chat_completions(body: schemas.ChatRequest, request: Request) -> Any:
        """Chat through the tech-assistant dialogue prompt (StarCoder is a base model)."""
        loaded = svc.resolve(body.model)
        if body.n != 1:
            raise APIError(400, "only n=1 is supported; send several requests instead.", "n")
        max_name = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        params = svc.params(loaded, body, body.max_completion_tokens or body.max_tokens, max_name)
        # OpenAI's newer "developer" role is the old "system"
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        preamble = svc.saved(loaded).get("assistant_preamble")
        svc.check_fit(loaded, params, _count(loaded.tokenizer, prompts.render_dialogue(messages, preamble)),
                      "messages")
        run = GenerationRun(request, lambda cancel: engine.chat(messages, params, preamble, cancel))
        rid, name = schemas.new_id("chatcmpl"), loaded.name
        first = await run.first()
        if not body.stream:
            chunks = await run.rest(first)
            return schemas.chat(rid, name, "".join(c.text for c in chunks).strip(), chunks[-1])
        started = [False]

        def render(chunk: Chunk) -> list[dict]:
            text = chunk.text
            if not started[0]:                  # the dialogue format puts a space after "Assistant:"
                text = text.lstrip()
                started[0] = bool(text)
            if not text and not chunk.finish_reason:
                return []
            return [schemas.chat_chunk(rid, name, {"content": text} if text else {}, chunk.finish_reason)]
        with_usage = bool(body.stream_options and body.stream_options.include_usage)
        opening = [schemas.chat_chunk(rid, name, {"role": "assistant", "content": ""}, None)]
        return event_stream(run, first, render, opening, lambda last: (
            [schemas.usage_chunk(rid, name, "chat.completion.chunk", last)] if with_usage else []))

    @app.post("/infill")
    async def infill(body: schemas.InfillRequest, request: Request) -> Any:
        """llama.cpp server's /infill. Like llama.cpp, a prompt too long for the context loses its far ends
        (input_extra first, then the prefix's start and the suffix's end) and reports `truncated`."""
        loaded = svc.resolve(None)
        tok = loaded.tokenizer
        # llama.cpp puts `prompt` after <FIM_MID>, i.e. it continues the prefix; the engine takes it there
        prefix = _extra_context(body.input_extra, tok) + body.input_prefix + body.prompt
        seed = None if body.seed is None else (-1 if body.seed < 0 or body.seed >= 0xFFFFFFFF else body.seed)
        n_predict = body.n_predict if body.n_predict is None or body.n_predict >= 0 else None
        params = svc.params(loaded, body, n_predict, "n_predict", repetition_penalty=body.repeat_penalty, seed=seed)
        context = svc.context(loaded, params)
        if body.n_predict is not None and body.n_predict < 0:
            room = context - _count(tok, prefix) - _count(tok, body.input_suffix) - 3
            if room >= 1:
                params = dataclasses.replace(params, max_new_tokens=room)
        order = svc.saved(loaded).get("fim_order", "psm")
        run = GenerationRun(request, lambda cancel: engine.infill(prefix, body.input_suffix, params, order, cancel))
        name = loaded.name
        first = await run.first()
        if not body.stream:
            chunks = await run.rest(first)
            content = "".join(c.text for c in chunks)
            return schemas.infill_final(name, content, first, chunks[-1], params, context, False)

        def render(chunk: Chunk) -> list[dict]:
            return [schemas.infill_partial(chunk.text, chunk)] if chunk.text else []
        # llama.cpp's native stream ends with the final object (content "", stop true), not with [DONE]
        return event_stream(run, first, render, [], lambda last: (
            [schemas.infill_final(name, "", first, last, params, context, True)]), done=False)

    @app.post("/v1/internal/token-count")
    async def token_count(body: schemas.TokenCountRequest) -> dict[str, int]:
        return {"length": await anyio.to_thread.run_sync(engine.count_tokens, body.text)}

    @app.get("/v1/internal/model/info")
    async def model_info() -> dict[str, Any]:
        loaded = engine.loaded
        info: dict[str, Any] = {"model_name": loaded.name if loaded else None, "lora_names": [],
                                "loaded": loaded is not None, "available": engine.list_models()}
        if loaded:
            info.update({"kernel": loaded.kernel, "kernels": loaded.kernels, "device": loaded.device,
                         "dtype": loaded.dtype, "context_length": loaded.info.n_positions,
                         "load_seconds": round(loaded.load_seconds, 3), "memory_bytes": loaded.memory_bytes,
                         "quant": loaded.info.summary()})
        return info

    @app.post("/v1/internal/model/load")
    async def model_load(body: schemas.LoadRequest) -> dict[str, Any]:
        """Load a model folder (replacing the current one; a running generation is cancelled first)."""
        if body.model_name not in engine.list_models():
            raise APIError(404, f"no model folder {body.model_name!r}; available: "
                                f"{', '.join(engine.list_models()) or 'none'}.", "model_name", "model_not_found")
        saved = settings.for_model(body.model_name)
        args = {k: getattr(body, k) or saved.get(k) for k in LOAD_KEYS}
        args = {k: v for k, v in args.items() if v}
        try:
            await anyio.to_thread.run_sync(functools.partial(engine.load, body.model_name, **args))
        except (ModelLoadError, ValueError, RuntimeError) as exc:   # bad checkpoint, kernel, device, dtype, memory
            raise APIError(400, f"could not load {body.model_name!r}: {exc}", "model_name",
                           "model_load_failed") from None
        return await model_info()

    @app.post("/v1/internal/model/unload")
    async def model_unload() -> dict[str, Any]:
        await anyio.to_thread.run_sync(engine.unload)
        return await model_info()

    return app
