"""Ollama's routes, the part editor plugins use: /api/generate (with real FIM through `suffix`), /api/chat,
/api/tags, /api/show, /api/ps, /api/version, and the "Ollama is running" banner where no web UI owns "/"."""
from __future__ import annotations

import dataclasses
import datetime
import json
import time
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from pydantic import Field

from api.errors import APIError, protocol_route, shaped
from api.schemas import ChatMessage, _Body
from api.service import Service, ServiceDep
from api.streaming import GenerationRun, event_stream
from backend.engine import LoadedModel, ModelInfo, PromptIds
from backend.generate import Chunk, GenerationParams

VERSION = "0.12.0"              # the Ollama API version whose shapes these routes answer with
# what /api/show advertises: with a suffix, StarCoder's FIM prompt (so Continue sends real FIM), else the prompt
TEMPLATE = ("{{- if .Suffix }}<fim_prefix>{{ .Prompt }}<fim_suffix>{{ .Suffix }}<fim_middle>"
            "{{- else }}{{ if .System }}{{ .System }}\n{{ end }}{{ .Prompt }}{{- end }}")
DONE_REASON = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "length"}


def ollama_error(status: int, error: dict[str, Any]) -> tuple[int, dict[str, str]]:
    return status, {"error": error["message"]}


router = APIRouter(prefix="/api", route_class=protocol_route(ollama_error))
root_router = APIRouter()


class Options(_Body):
    """Ollama's per-request options that this server honours; the rest (num_gpu, mirostat...) are ignored."""
    num_predict: int | None = None              # -1 and -2: as much as the context holds
    num_ctx: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repeat_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | None = None


class GenerateRequest(_Body):
    model: str = ""
    prompt: str = ""
    suffix: str = ""
    system: str = ""
    template: str = ""
    context: list[int] | None = None
    raw: bool = False
    stream: bool = True
    options: Options = Field(default_factory=Options)


class ChatRequest(_Body):
    model: str = ""
    messages: list[ChatMessage] = Field(default_factory=list)
    stream: bool = True
    options: Options = Field(default_factory=Options)


def _name(model: str | None) -> str | None:
    # Ollama spells a model "name:tag"; our folders have no tags
    return model.removesuffix(":latest") if model else None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def _params(svc: Service, loaded: LoadedModel, o: Options) -> GenerationParams:
    n_predict = o.num_predict if o.num_predict is not None and o.num_predict > 0 else None
    seed = None if o.seed is None else max(o.seed, -1)
    return svc.params(loaded, o, n_predict, "num_predict", repetition_penalty=o.repeat_penalty, seed=seed,
                      context_length=min(o.num_ctx, loaded.info.n_positions) if o.num_ctx else None)


def _fit(prompt: PromptIds, params: GenerationParams, o: Options) -> GenerationParams:
    if o.num_predict is not None and o.num_predict < 0 and prompt.room >= 1:
        params = dataclasses.replace(params, max_new_tokens=prompt.room)
    return prompt.cap(params)


def _metrics(first: Chunk, last: Chunk, started: float) -> dict[str, Any]:
    """Ollama's counts and durations (nanoseconds); prompt time is the time to the first token."""
    prompt_ns = int(first.elapsed_s * 1e9)
    return {"done_reason": DONE_REASON[last.finish_reason or "length"],
            "total_duration": int((time.perf_counter() - started) * 1e9), "load_duration": 0,
            "prompt_eval_count": last.prompt_tokens, "prompt_eval_duration": prompt_ns,
            "eval_count": last.completion_tokens, "eval_duration": max(int(last.elapsed_s * 1e9) - prompt_ns, 0)}


def _ndjson(item: Any) -> str:
    return json.dumps(item, ensure_ascii=False) + "\n"


async def _answer(run: GenerationRun, stream: bool, name: str, started: float, piece) -> Any:
    """Ollama's answer: NDJSON lines, the last one `done` with the counts; or one object with stream false."""
    first = await run.first()
    if not stream:
        chunks = await run.rest(first)
        return {**piece("".join(c.text for c in chunks)), "done": True, **_metrics(first, chunks[-1], started)}
    return event_stream(run, first, lambda c: [{**piece(c.text), "done": False}] if c.text else [], [],
                        lambda last: [{**piece(""), "done": True, **_metrics(first, last, started)}], done=False,
                        frame=_ndjson, media_type="application/x-ndjson",
                        on_error=lambda exc: shaped(exc, ollama_error)[1])


@router.post("/generate")
async def generate(body: GenerateRequest, request: Request, svc: ServiceDep) -> Any:
    """Completion; with a suffix (and not raw), the middle between prompt and suffix, as the template says."""
    started = time.perf_counter()
    loaded = svc.resolve(_name(body.model))
    name = body.model or loaded.name
    if body.raw and (body.template or body.system or body.context):
        raise APIError(400, "raw mode does not support template, system, or context")
    if not body.prompt and not body.suffix:          # Ollama's way to load a model: it is loaded already
        return {"model": name, "created_at": _now(), "response": "", "done": True, "done_reason": "load"}
    suffix = body.suffix if body.suffix and not body.raw else None
    text = body.prompt if body.raw or suffix is not None or not body.system else f"{body.system}\n{body.prompt}"
    params = _params(svc, loaded, body.options)
    order = svc.saved(loaded).get("fim_order", "psm")
    prompt = await anyio.to_thread.run_sync(svc.engine.prompt_ids, text, params, suffix, order)
    params = _fit(prompt, params, body.options)
    if suffix is None:
        run = GenerationRun(request, lambda cancel: svc.engine.complete(text, params, cancel))
    else:
        run = GenerationRun(request, lambda cancel: svc.engine.infill(text, suffix, params, order, cancel))
    return await _answer(run, body.stream, name, started,
                         lambda t: {"model": name, "created_at": _now(), "response": t})


@router.post("/chat")
async def chat(body: ChatRequest, request: Request, svc: ServiceDep) -> Any:
    """The assistant's next turn, through the tech-assistant dialogue prompt fitted to the context."""
    started = time.perf_counter()
    loaded = svc.resolve(_name(body.model))
    name = body.model or loaded.name
    if not body.messages:                           # Ollama's way to load a model
        return {"model": name, "created_at": _now(), "message": {"role": "assistant", "content": ""},
                "done": True, "done_reason": "load"}
    messages = [{"role": m.role.lower(), "content": m.text()} for m in body.messages]
    preamble = svc.saved(loaded).get("assistant_preamble") or None
    params = _params(svc, loaded, body.options)
    text, prompt, params = await anyio.to_thread.run_sync(svc.engine.chat_prompt, messages, params, preamble)
    if prompt.room < 1:
        raise APIError(400, f"the conversation's last message alone is {len(prompt.ids)} tokens, more than the "
                            f"model's context of {prompt.context}; shorten it.")
    params = _fit(prompt, params, body.options)
    run = GenerationRun(request, lambda cancel: svc.engine.complete(text, params, cancel))
    started_text = [False]

    def piece(t: str) -> dict[str, Any]:
        if not started_text[0]:                     # the dialogue format puts a space after "Assistant:"
            t = t.lstrip()
            started_text[0] = bool(t)
        return {"model": name, "created_at": _now(), "message": {"role": "assistant", "content": t}}
    return await _answer(run, body.stream, name, started, piece)


def _details(info: ModelInfo) -> dict[str, Any]:
    q = info.quant
    return {"parent_model": "", "format": "safetensors", "family": "starcoder", "families": ["starcoder"],
            "parameter_size": f"{info.checkpoint.config.n_layer} layers", "quantization_level": f"GPTQ-{q.bits}bit",
            "context_length": info.n_positions}


def _card(svc: Service, name: str) -> dict[str, Any]:
    info = svc.engine.inspect(name)
    modified = max((p.stat().st_mtime for p in info.checkpoint.files), default=0.0)
    return {"name": f"{name}:latest", "model": f"{name}:latest",
            "modified_at": datetime.datetime.fromtimestamp(modified, datetime.timezone.utc).isoformat(),
            "size": sum(p.stat().st_size for p in info.checkpoint.files), "digest": "", "details": _details(info)}


@router.get("/tags")
async def tags(svc: ServiceDep) -> dict[str, Any]:
    names = svc.engine.list_models()
    return {"models": [await anyio.to_thread.run_sync(_card, svc, n) for n in names]}


class ShowRequest(_Body):
    model: str = ""
    name: str = ""                                  # the older spelling


@router.post("/show")
async def show(body: ShowRequest, svc: ServiceDep) -> dict[str, Any]:
    """The template (with `.Suffix`: Continue then sends real FIM), the context length and the parameters."""
    wanted = _name(body.model or body.name)
    if wanted and wanted in svc.engine.list_models():
        info = await anyio.to_thread.run_sync(svc.engine.inspect, wanted)
    else:
        info = svc.resolve(wanted).info
    context = info.n_positions
    return {"modelfile": f"FROM {info.name}\nTEMPLATE \"\"\"{TEMPLATE}\"\"\"\nPARAMETER num_ctx {context}\n",
            "parameters": f"num_ctx                        {context}\nstop                           \"<|endoftext|>\"",
            "template": TEMPLATE, "details": _details(info),
            "model_info": {"general.architecture": "starcoder", "starcoder.context_length": context,
                           "starcoder.embedding_length": info.checkpoint.config.n_embd,
                           "starcoder.block_count": info.checkpoint.config.n_layer},
            "capabilities": ["completion", "insert"], "modified_at": _now()}


@router.get("/ps")
async def ps(svc: ServiceDep) -> dict[str, Any]:
    loaded = svc.engine.loaded
    if loaded is None:
        return {"models": []}
    card = await anyio.to_thread.run_sync(_card, svc, loaded.name)
    card.pop("modified_at")
    return {"models": [{**card, "expires_at": "2318-01-01T00:00:00Z", "context_length": loaded.info.n_positions,
                        "size_vram": loaded.memory_bytes if loaded.device.startswith("cuda") else 0}]}


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": VERSION}


@root_router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def banner() -> PlainTextResponse:
    """Ollama clients probe GET / before anything else; mounted only where no web UI is served at "/"."""
    return PlainTextResponse("Ollama is running")
