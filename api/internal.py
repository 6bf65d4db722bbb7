"""The model-control routes (text-generation-webui's /v1/internal/...): tokens, models, load, unload, stop."""
from __future__ import annotations

import functools
from typing import Any

import anyio
from fastapi import APIRouter

from api import schemas
from api.errors import APIError
from api.service import ServiceDep
from backend.engine import Engine
from backend.errors import UserError
from backend.loader import ModelLoadError
from backend.settings import LOAD_KEYS

router = APIRouter(prefix="/v1/internal")


def _info(engine: Engine) -> dict[str, Any]:
    loaded = engine.loaded
    info: dict[str, Any] = {"model_name": loaded.name if loaded else None, "lora_names": [],
                            "loaded": loaded is not None, "available": engine.list_models()}
    if loaded:
        info.update({"kernel": loaded.kernel, "kernels": loaded.kernels, "device": loaded.device,
                     "dtype": loaded.dtype, "context_length": loaded.info.n_positions,
                     "load_seconds": round(loaded.load_seconds, 3), "memory_bytes": loaded.memory_bytes,
                     "quant": loaded.info.summary()})
    return info


@router.post("/token-count")
async def token_count(body: schemas.TokenCountRequest, svc: ServiceDep) -> dict[str, int]:
    return {"length": await anyio.to_thread.run_sync(svc.engine.count_tokens, body.text)}


@router.post("/encode")
async def encode(body: schemas.TokenCountRequest, svc: ServiceDep) -> dict[str, Any]:
    loaded = svc.resolve(None)
    tokens = await anyio.to_thread.run_sync(lambda: loaded.tokenizer.encode(body.text, add_special_tokens=False))
    return {"tokens": tokens, "length": len(tokens)}


@router.post("/decode")
async def decode(body: schemas.DecodeRequest, svc: ServiceDep) -> dict[str, str]:
    loaded = svc.resolve(None)
    return {"text": await anyio.to_thread.run_sync(loaded.tokenizer.decode, body.tokens)}


@router.get("/model/list")
async def model_list(svc: ServiceDep) -> dict[str, list[str]]:
    return {"model_names": svc.engine.list_models()}


@router.post("/stop-generation")
async def stop_generation(svc: ServiceDep) -> str:
    """Cancels every running generation, within one token; text-generation-webui answers "OK"."""
    svc.engine.cancel_all()
    return "OK"


@router.get("/model/info")
async def model_info(svc: ServiceDep) -> dict[str, Any]:
    return _info(svc.engine)


@router.post("/model/load")
async def model_load(body: schemas.LoadRequest, svc: ServiceDep) -> dict[str, Any]:
    """Load a model folder (replacing the current one; a running generation is cancelled first)."""
    engine = svc.engine
    if body.model_name not in engine.list_models():
        raise APIError(404, f"no model folder {body.model_name!r}; available: "
                            f"{', '.join(engine.list_models()) or 'none'}.", "model_name", "model_not_found")
    saved = svc.settings.for_model(body.model_name)
    args = {k: getattr(body, k) or saved.get(k) for k in LOAD_KEYS}
    args = {k: v for k, v in args.items() if v}
    try:
        await anyio.to_thread.run_sync(functools.partial(engine.load, body.model_name, **args))
    except (UserError, ValueError, RuntimeError) as exc:   # bad checkpoint, kernel, device, dtype, memory
        # torch reports a bad device or too little memory as a plain RuntimeError: still the user's to fix
        raise ModelLoadError(f"could not load {body.model_name!r}: {exc}") from exc
    return _info(engine)


@router.post("/model/unload")
async def model_unload(svc: ServiceDep) -> dict[str, Any]:
    await anyio.to_thread.run_sync(svc.engine.unload)
    return _info(svc.engine)
