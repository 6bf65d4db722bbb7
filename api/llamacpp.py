"""llama.cpp server's routes: /infill (llama.vim, llama.vscode), /completion (Continue's llama.cpp provider, llm-ls),
/health and /props."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterator

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from api import schemas
from api.errors import protocol_route, shaped
from api.service import Service, ServiceDep
from api.streaming import SSE_HEADERS, GenerationRun, event_stream, sse
from backend.engine import LoadedModel, PromptIds
from backend.generate import Chunk, GenerationParams


def llama_error(status: int, error: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """llama.cpp's error object carries the status as `code`."""
    return status, {"error": {**error, "code": status}}


router = APIRouter(route_class=protocol_route(llama_error))


def _extra_context(chunks: list[schemas.ExtraChunk], tokenizer) -> str:
    """llama.cpp's input_extra as StarCoder saw other files in training: `<filename>path\\ncode`, before the prefix."""
    marker = "<filename>" if tokenizer.convert_tokens_to_ids("<filename>") not in (None, tokenizer.unk_token_id) else ""
    parts = []
    for chunk in chunks:
        if chunk.text or chunk.filename:
            text = chunk.text if chunk.text.endswith("\n") or not chunk.text else chunk.text + "\n"
            parts.append(f"{marker}{chunk.filename}\n{text}" if marker else text)
    return "".join(parts)


def _indent_cut(text: str, n_indent: int) -> int | None:
    """Where llama.cpp's n_indent cuts `text`: after the indentation of the first line (not the first of the
    answer) that has code and less indentation than n_indent; None while every line is indented enough."""
    start = text.find("\n") + 1
    while start:
        line = text[start:].split("\n", 1)[0]
        body = line.lstrip(" \t")
        if body and len(line) - len(body) < n_indent:
            return start + len(line) - len(body)
        start = text.find("\n", start) + 1
    return None


def _limited(chunks: Iterator[Chunk], n_indent: int, t_max_predict_ms: int) -> Iterator[Chunk]:
    """llama.cpp's two early stops, which end with stop_type "limit": a line indented less than n_indent (that
    line is cut), and a newline once t_max_predict_ms of generation have passed."""
    text, started = "", None
    try:
        for chunk in chunks:
            started = chunk.elapsed_s if started is None else started
            before = len(text)
            text += chunk.text
            cut = _indent_cut(text, n_indent) if n_indent > 0 else None
            if cut is not None:
                yield dataclasses.replace(chunk, text=text[before:max(cut, before)], finish_reason="length")
                return
            over = (chunk.elapsed_s - started) * 1000 > t_max_predict_ms
            if t_max_predict_ms > 0 and "\n" in chunk.text and over and chunk.finish_reason is None:
                yield dataclasses.replace(chunk, finish_reason="length")
                return
            yield chunk
    finally:
        chunks.close()                          # ends the engine's generation, and frees its lock, now


def _params(svc: Service, loaded: LoadedModel, body: schemas._LlamaRequest) -> GenerationParams:
    seed = None if body.seed is None else (-1 if body.seed < 0 or body.seed >= 0xFFFFFFFF else body.seed)
    n_predict = body.n_predict if body.n_predict is not None else body.max_tokens
    n_predict = n_predict if n_predict is not None and n_predict > 0 else None
    return svc.params(loaded, body, n_predict, "n_predict", repetition_penalty=body.repeat_penalty, seed=seed)


async def _answer(body: schemas._LlamaRequest, request: Request, svc: Service, loaded: LoadedModel,
                  prompt: PromptIds, params: GenerationParams, start) -> Any:
    """Fit n_predict to the context, generate, answer as llama.cpp (one object, or its SSE stream)."""
    n_predict = body.n_predict if body.n_predict is not None else body.max_tokens
    name, context = loaded.name, prompt.context
    if n_predict == 0:
        # llama.vscode warms llama.cpp's prompt cache this way; there is no cache to warm here: just the counts
        empty = Chunk("", len(prompt.ids), 0, 0.0, max(len(prompt.ids) - context + 1, 0), "length")
        final = schemas.infill_final(name, "", empty, empty, params, context, body.stream)
        final["generation_settings"]["n_predict"] = 0
        if body.stream:
            return StreamingResponse(iter([sse(final)]), media_type="text/event-stream", headers=SSE_HEADERS)
        return final
    if n_predict is not None and n_predict < 0 and prompt.room >= 1:
        params = dataclasses.replace(params, max_new_tokens=prompt.room)
    params = prompt.cap(params)
    run = GenerationRun(request, lambda cancel: _limited(start(params, cancel), body.n_indent, body.t_max_predict_ms))
    first = await run.first()
    if not body.stream:
        chunks = await run.rest(first)
        content = "".join(c.text for c in chunks)
        return schemas.infill_final(name, content, first, chunks[-1], params, context, False)

    def render(chunk: Chunk) -> list[dict]:
        return [schemas.infill_partial(chunk.text, chunk)] if chunk.text else []
    # llama.cpp's native stream ends with the final object (content "", stop true), not with [DONE]
    return event_stream(run, first, render, [], lambda last: (
        [schemas.infill_final(name, "", first, last, params, context, True)]), done=False,
        on_error=lambda exc: shaped(exc, llama_error)[1])


def _mixed_prompt(parts: list[int | str], tokenizer) -> str:
    """llama.cpp's prompt as a list of token ids and strings; runs of ids are decoded together (a character
    may span several tokens)."""
    text, ids = [], []
    for part in parts + [""]:
        if isinstance(part, int):
            ids.append(part)
            continue
        if ids:
            text.append(tokenizer.decode(ids))
            ids = []
        text.append(part)
    return "".join(text)


@router.post("/infill")
async def infill(body: schemas.InfillRequest, request: Request, svc: ServiceDep) -> Any:
    """llama.cpp server's /infill. Like llama.cpp, a prompt too long for the context loses its far ends
    (input_extra first, then the prefix's start and the suffix's end) and reports `truncated`."""
    loaded = svc.resolve(None)
    # llama.cpp puts `prompt` after <FIM_MID>, i.e. it continues the prefix; the engine takes it there
    prefix = _extra_context(body.input_extra, loaded.tokenizer) + body.input_prefix + body.prompt

    def prepare():   # settings and tokenizing: off the event loop
        params = _params(svc, loaded, body)
        order = svc.saved(loaded).get("fim_order", "psm")
        return params, order, svc.engine.prompt_ids(prefix, params, body.input_suffix, order)
    params, order, prompt = await anyio.to_thread.run_sync(prepare)
    return await _answer(body, request, svc, loaded, prompt, params, lambda p, cancel: svc.engine.infill(
        prefix, body.input_suffix, p, order, cancel))


@router.post("/completion")
@router.post("/completions")
async def completion(body: schemas.LlamaCompletionRequest, request: Request, svc: ServiceDep) -> Any:
    """llama.cpp server's /completion: the prompt as given (Continue renders its FIM template into it); a
    prompt longer than the context loses its start, as with llama.cpp's context shift."""
    loaded = svc.resolve(None)
    prompt_text = body.prompt if isinstance(body.prompt, str) else _mixed_prompt(body.prompt, loaded.tokenizer)
    params = _params(svc, loaded, body)
    prompt = await anyio.to_thread.run_sync(svc.engine.prompt_ids, prompt_text, params)
    return await _answer(body, request, svc, loaded, prompt, params,
                         lambda p, cancel: svc.engine.complete(prompt_text, p, cancel))


@router.get("/health")
async def health(svc: ServiceDep) -> Any:
    """llama.cpp's and TGI's health check (both GET /health): 200 once a model is loaded, else 503."""
    if svc.engine.loaded is None:
        return JSONResponse({"error": {"code": 503, "message": "no model is loaded", "type": "unavailable_error"},
                             "error_type": "healthcheck"}, status_code=503)
    return {"status": "ok"}


@router.get("/props")
async def props(svc: ServiceDep) -> dict[str, Any]:
    loaded = svc.resolve(None)
    params = svc.params(loaded, None, None)
    return {"default_generation_settings": {"id": 0, "n_ctx": loaded.info.n_positions, "is_processing": False,
                                            "params": {**params.to_dict(), "n_predict": params.max_new_tokens,
                                                       "repeat_penalty": params.repetition_penalty}},
            "total_slots": 1, "model_path": loaded.name, "chat_template": "", "build_info": "starcoder-webui",
            "modalities": {"vision": False, "audio": False}, "timestamp": int(time.time())}
