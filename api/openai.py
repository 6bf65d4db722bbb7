"""OpenAI's routes: /v1/models, /v1/completions (real fill-in-the-middle with `suffix`), /v1/chat/completions."""
from __future__ import annotations

import functools
from typing import Any

import anyio
from fastapi import APIRouter, Request

from api import schemas, tabby
from api.errors import APIError
from api.service import ServiceDep
from api.streaming import GenerationRun, event_stream
from backend.engine import Engine, PromptIds
from backend.generate import Chunk, GenerationParams

router = APIRouter()


def _prompt_text(prompt: Any, tokenizer) -> str:
    """OpenAI's prompt forms: a string, or one string / one token list in a list (token ids are decoded)."""
    if isinstance(prompt, str):
        return prompt
    if prompt and all(isinstance(p, int) for p in prompt):
        if not all(0 <= p < len(tokenizer) for p in prompt):
            raise APIError(400, f"token ids must be in [0, {len(tokenizer)}) for this model's vocabulary.", "prompt")
        return tokenizer.decode(prompt)
    if len(prompt) == 1:
        return _prompt_text(prompt[0], tokenizer)
    raise APIError(400, "only one prompt per request is supported; send several requests instead.", "prompt")


def _fit(prompt: PromptIds, params: GenerationParams, param: str) -> GenerationParams:
    """max_tokens larger than what fits is capped to it (finish_reason "length"); a prompt that leaves no room
    for even one token is a 400, not silently shortened."""
    if prompt.room < 1:
        raise APIError(400, f"this model's context is {prompt.context} tokens, but the prompt alone is "
                            f"{len(prompt.ids)}; shorten the prompt.", param, "context_length_exceeded")
    return prompt.cap(params)


def _model_card(engine: Engine, name: str) -> dict[str, Any]:
    loaded = engine.loaded
    card = {"id": name, "object": "model", "created": 0, "owned_by": "local",
            "loaded": loaded is not None and loaded.name == name}
    if card["loaded"]:
        card["context_length"] = loaded.info.n_positions
    return card


@router.get("/v1/models")
async def list_models(svc: ServiceDep) -> dict[str, Any]:
    """The loaded model first (clients that take the first entry get it), then the other model folders."""
    loaded = svc.engine.loaded
    names = ([loaded.name] if loaded else []) + [n for n in svc.engine.list_models() if not loaded or n != loaded.name]
    return {"object": "list", "data": [_model_card(svc.engine, n) for n in names]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, svc: ServiceDep) -> dict[str, Any]:
    loaded = svc.engine.loaded
    if model_id not in svc.engine.list_models() and not (loaded and loaded.name == model_id):
        raise APIError(404, f"no model {model_id!r}; see GET /v1/models.", "model", "model_not_found")
    return _model_card(svc.engine, model_id)


@router.post("/v1/completions")
async def completions(body: schemas.CompletionRequest, request: Request, svc: ServiceDep) -> Any:
    """Text completion; with `suffix`, real fill-in-the-middle that answers only the middle. Tabby's editor
    plugins post to the same path: a body with `segments` and no `prompt` is Tabby's."""
    if body.segments is not None and "prompt" not in body.model_fields_set:
        return await tabby.completions(body, request, svc)
    loaded = svc.resolve(body.model)
    if body.n != 1 or (body.best_of or 1) != 1:
        raise APIError(400, "only n=1 (and best_of=1) is supported: the model generates one sequence at a "
                            "time; send several requests instead.", "n")
    if body.logprobs:
        raise APIError(400, "logprobs are not supported by this server; leave logprobs out.", "logprobs")
    suffix = body.suffix

    def prepare():   # decoding, settings and tokenizing: off the event loop
        prompt = _prompt_text(body.prompt, loaded.tokenizer)
        params = svc.params(loaded, body, body.max_tokens)
        order = body.fim_order or svc.saved(loaded).get("fim_order", "psm")
        return prompt, params, order, svc.engine.prompt_ids(prompt, params, suffix, order)
    prompt, params, order, prompt_ids = await anyio.to_thread.run_sync(prepare)
    params = _fit(prompt_ids, params, "prompt")
    if suffix is None:
        start = functools.partial(svc.engine.complete, prompt, params)
    else:
        start = functools.partial(svc.engine.infill, prompt, suffix, params, order)
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


@router.post("/v1/chat/completions")
async def chat_completions(body: schemas.ChatRequest, request: Request, svc: ServiceDep) -> Any:
    """Chat through the tech-assistant dialogue prompt (StarCoder is a base model)."""
    loaded = svc.resolve(body.model)
    if body.n != 1:
        raise APIError(400, "only n=1 is supported; send several requests instead.", "n")
    newer = body.max_completion_tokens is not None      # 0 is a value (refused by params), not "unset"
    max_name = "max_completion_tokens" if newer else "max_tokens"
    params, preamble = await anyio.to_thread.run_sync(lambda: (
        svc.params(loaded, body, body.max_completion_tokens if newer else body.max_tokens, max_name),
        svc.saved(loaded).get("assistant_preamble") or None))   # empty: the built-in preamble
    # OpenAI's newer "developer" role is the old "system"
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in body.messages]
    dialogue, prompt_ids, params = await anyio.to_thread.run_sync(svc.engine.chat_prompt, messages, params, preamble)
    params = _fit(prompt_ids, params, "messages")
    run = GenerationRun(request, lambda cancel: svc.engine.complete(dialogue, params, cancel))
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
