"""A stand-in for a vLLM server (its OpenAI routes, /tokenize, /health), for fast tests of routing and errors.

It tokenizes with the model folder's own tokenizer and "generates" a fixed text, one word per event,
recording each request's body and whether its stream ran to the end or was abandoned.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


@dataclasses.dataclass
class FakeState:
    served: str = "starcoder-demo"
    max_model_len: int = 512
    words: tuple[str, ...] = ("a", " b", " c", " d")
    delay_s: float = 0.0
    shift_ids: int = 0                      # nonzero: a different vocabulary (ids off by this much)
    fail_with: int = 0                      # nonzero: every completion answers this status
    tokenize_route: bool = True             # False: no /tokenize (like a bare OpenAI-style proxy)
    bodies: list[dict] = dataclasses.field(default_factory=list)
    finished: int = 0
    abandoned: int = 0
    running: int = 0
    peak: int = 0                           # most streams open at once


def fake_vllm(tokenizer, state: FakeState) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": state.served, "root": "models/" + state.served,
                                            "max_model_len": state.max_model_len}]}

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Any:
        if not state.tokenize_route:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        body = await request.json()
        ids = tokenizer.encode(body["prompt"], add_special_tokens=False)
        return {"tokens": [i + state.shift_ids for i in ids], "count": len(ids), "max_model_len": state.max_model_len}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        state.bodies.append(body)
        if state.fail_with:
            return JSONResponse({"error": {"message": f"fake failure {state.fail_with}", "type": "BadRequestError",
                                           "code": state.fail_with}}, status_code=state.fail_with)
        words = list(state.words)[:body["max_tokens"]]
        # like vLLM: a text that ends at the end token gets one more event, without text, and the end token
        # is counted in usage
        ends = len(words) < body["max_tokens"]
        steps = words + ([""] if ends else [])

        async def events():
            state.running += 1
            state.peak = max(state.peak, state.running)
            try:
                for i, word in enumerate(steps):
                    await asyncio.sleep(state.delay_s)
                    last = i == len(steps) - 1
                    choice = {"index": 0, "text": word, "logprobs": None,
                              "finish_reason": ("stop" if ends else "length") if last else None,
                              "stop_reason": None}
                    usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": i + 1,
                             "total_tokens": len(body["prompt"]) + i + 1}
                    yield f"data: {json.dumps({'id': 'x', 'choices': [choice], 'usage': usage})}\n\n"
                yield f"data: {json.dumps({'id': 'x', 'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"
                state.finished += 1
            except (asyncio.CancelledError, GeneratorExit):
                state.abandoned += 1
                raise
            finally:
                state.running -= 1
        return StreamingResponse(events(), media_type="text/event-stream")

    return app
