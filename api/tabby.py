"""Tabby's routes, for its editor plugins: /v1/health, and its /v1/completions (which OpenAI's route hands over
when the body has `segments` and no `prompt`)."""
from __future__ import annotations

import os
import platform
from typing import Any

import anyio
from fastapi import APIRouter, Request

from api import schemas
from api.service import Service, ServiceDep
from api.streaming import GenerationRun

MAX_DECODING_TOKENS = 64        # Tabby's own default length of a suggestion

router = APIRouter()


async def completions(body: schemas.CompletionRequest, request: Request, svc: Service) -> dict[str, Any]:
    """The middle between the segments' prefix and suffix; {id, choices: [{index, text}]}."""
    loaded = svc.resolve(None)
    segments = body.segments
    suffix = segments.suffix or ""
    params = svc.params(loaded, body, body.max_tokens or MAX_DECODING_TOKENS)
    order = svc.saved(loaded).get("fim_order", "psm")
    prompt = await anyio.to_thread.run_sync(svc.engine.prompt_ids, segments.prefix, params, suffix, order)
    params = prompt.cap(params)
    affinity = svc.affinity(request, segments.filepath)
    run = GenerationRun(request, lambda cancel: svc.engine.infill(segments.prefix, suffix, params, order, cancel,
                                                                  affinity))
    chunks = await run.rest(await run.first())
    return {"id": schemas.new_id("cmpl"), "choices": [{"index": 0, "text": "".join(c.text for c in chunks)}]}


@router.api_route("/v1/health", methods=["GET", "POST"])
async def health(svc: ServiceDep) -> dict[str, Any]:
    """Tabby's HealthState; its plugins read the model and the version."""
    loaded = svc.engine.loaded
    device = loaded.device.split(":")[0] if loaded else "cpu"
    cuda = [loaded.device] if loaded and device == "cuda" else []
    local = {"model_id": loaded.name, "device": device} if loaded else None
    return {"model": loaded.name if loaded else None, "device": device, "cuda_devices": cuda,
            "models": {"completion": {"local": local}} if local else {},
            "arch": platform.machine(), "cpu_info": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count() or 1,
            "version": {"build_date": "", "build_timestamp": "", "git_sha": "", "git_describe": "v0.30.0"},
            "webserver": False}
