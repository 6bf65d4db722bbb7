"""llama.cpp server's routes: /infill, the fill-in-the-middle endpoint editor plugins (llama.vim, llama.vscode) call."""
from __future__ import annotations

import dataclasses
from typing import Any

import anyio
from fastapi import APIRouter, Request

from api import schemas
from api.service import ServiceDep
from api.streaming import GenerationRun, event_stream
from backend.generate import Chunk

router = APIRouter()


def _extra_context(chunks: list[schemas.ExtraChunk], tokenizer) -> str:
    """llama.cpp's input_extra as StarCoder saw other files in training: `<filename>path\\ncode`, before the prefix."""
    marker = "<filename>" if tokenizer.convert_tokens_to_ids("<filename>") not in (None, tokenizer.unk_token_id) else ""
    parts = []
    for chunk in chunks:
        if chunk.text or chunk.filename:
            text = chunk.text if chunk.text.endswith("\n") or not chunk.text else chunk.text + "\n"
            parts.append(f"{marker}{chunk.filename}\n{text}" if marker else text)
    return "".join(parts)


@router.post("/infill")
async def infill(body: schemas.InfillRequest, request: Request, svc: ServiceDep) -> Any:
    """llama.cpp server's /infill. Like llama.cpp, a prompt too long for the context loses its far ends
    (input_extra first, then the prefix's start and the suffix's end) and reports `truncated`."""
    loaded = svc.resolve(None)
    tok = loaded.tokenizer
    # llama.cpp puts `prompt` after <FIM_MID>, i.e. it continues the prefix; the engine takes it there
    prefix = _extra_context(body.input_extra, tok) + body.input_prefix + body.prompt
    seed = None if body.seed is None else (-1 if body.seed < 0 or body.seed >= 0xFFFFFFFF else body.seed)
    n_predict = body.n_predict if body.n_predict is None or body.n_predict >= 0 else None

    def prepare():   # settings and tokenizing: off the event loop
        params = svc.params(loaded, body, n_predict, "n_predict", repetition_penalty=body.repeat_penalty, seed=seed)
        order = svc.saved(loaded).get("fim_order", "psm")
        return params, order, svc.engine.prompt_ids(prefix, params, body.input_suffix, order)
    params, order, prompt = await anyio.to_thread.run_sync(prepare)
    context = prompt.context
    if body.n_predict is not None and body.n_predict < 0 and prompt.room >= 1:
        params = dataclasses.replace(params, max_new_tokens=prompt.room)
    run = GenerationRun(request, lambda cancel: svc.engine.infill(prefix, body.input_suffix, params, order, cancel))
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
