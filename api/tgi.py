"""Text Generation Inference's routes: /generate, /generate_stream, POST / and /models/{id} (the Inference API
shape llm-ls's `tgi` and `huggingface` backends and Continue's `huggingface-tgi` provider call), and /info."""
from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Request
from pydantic import Field

from api.errors import APIError, protocol_route, shaped
from api.schemas import _Body
from api.service import Service, ServiceDep
from api.streaming import GenerationRun, event_stream
from backend.engine import LoadedModel
from backend.generate import Chunk, GenerationParams

FINISH = {"eos": "eos_token", "stop": "stop_sequence", "length": "length", "cancelled": "length"}
MAX_STOP_SEQUENCES = 4          # TGI's default --max-stop-sequences


def tgi_error(status: int, error: dict[str, Any]) -> tuple[int, dict[str, str]]:
    """TGI's {"error", "error_type"}: the request's faults are 422 "validation", a failed generation 424."""
    message = error["message"]
    if status == 503:
        return 503, {"error": message, "error_type": "unhealthy"}
    if status == 404:
        return 404, {"error": message, "error_type": "not_found"}
    if status < 500:
        return 422, {"error": message, "error_type": "validation"}
    return 424, {"error": message, "error_type": "generation"}


router = APIRouter(route_class=protocol_route(tgi_error))


class Parameters(_Body):
    """TGI's GenerateParameters; sampling happens with do_sample or any sampling parameter set, as in TGI."""
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    do_sample: bool = False
    return_full_text: bool | None = None
    truncate: int | None = None
    details: bool = False
    decoder_input_details: bool = False
    best_of: int | None = None


class GenerateRequest(_Body):
    inputs: str
    parameters: Parameters = Field(default_factory=Parameters)
    stream: bool = False                        # read by POST / and /models/{id} only


def _invalid(message: str) -> APIError:
    return APIError(400, message)


def _params(svc: Service, loaded: LoadedModel, p: Parameters) -> GenerationParams:
    """TGI's validation and its neutral defaults (not the web UI's saved samplers): a client that sends no
    sampling parameter and no do_sample gets greedy decoding."""
    if p.temperature is not None and p.temperature <= 0:
        raise _invalid("`temperature` must be strictly positive")
    if p.top_p is not None and not 0 < p.top_p < 1:
        raise _invalid("`top_p` must be > 0.0 and < 1.0")
    if p.typical_p is not None and not 0 < p.typical_p < 1:
        raise _invalid("`typical_p` must be > 0.0 and < 1.0")
    if p.top_k is not None and p.top_k <= 0:
        raise _invalid("`top_k` must be strictly positive")
    if p.repetition_penalty is not None and p.repetition_penalty <= 0:
        raise _invalid("`repetition_penalty` must be strictly positive")
    if p.max_new_tokens is not None and p.max_new_tokens <= 0:
        raise _invalid("`max_new_tokens` must be strictly positive")
    if len(p.stop) > MAX_STOP_SEQUENCES:
        raise _invalid(f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences. Given: {len(p.stop)}")
    if (p.best_of or 1) != 1:
        raise _invalid("`best_of` != 1 is not supported: this server generates one sequence at a time")
    if p.decoder_input_details:
        raise _invalid("`decoder_input_details` == true is not supported")
    sampling = (p.do_sample or (p.temperature not in (None, 1.0)) or bool(p.top_k)
                or (p.top_p or 1.0) < 1 or (p.typical_p or 1.0) < 1)
    seed = -1 if p.seed is None else p.seed % 2**63
    return svc.params(loaded, None, p.max_new_tokens, "max_new_tokens", temperature=(p.temperature or 1.0)
                      if sampling else 0.0, top_p=p.top_p or 1.0, top_k=p.top_k or 0, typical_p=p.typical_p or 1.0,
                      min_p=0.0, no_repeat_ngram_size=0, repetition_penalty=p.repetition_penalty or 1.0,
                      seed=seed, stop=tuple(p.stop))


async def _start(body: GenerateRequest, request: Request, svc: Service, model: str | None = None):
    """Validate, fit to the context, start generating; (run, first chunk, params, prompt token count)."""
    loaded = svc.resolve(model)
    if not body.inputs:
        raise _invalid("`inputs` cannot be empty")
    params = _params(svc, loaded, body.parameters)
    text = body.inputs
    prompt = await anyio.to_thread.run_sync(svc.engine.prompt_ids, text, params)
    truncate = body.parameters.truncate
    if truncate is not None:
        if not 0 < truncate < prompt.context:
            raise _invalid(f"`truncate` must be strictly positive and less than {prompt.context}. Given: {truncate}")
        if len(prompt.ids) > truncate:
            text = loaded.tokenizer.decode(prompt.ids[-truncate:])
            prompt = await anyio.to_thread.run_sync(svc.engine.prompt_ids, text, params)
    if prompt.room < 1:
        raise _invalid(f"`inputs` tokens + `max_new_tokens` must be <= {prompt.context}. Given: "
                       f"{len(prompt.ids)} `inputs` tokens and {params.max_new_tokens} `max_new_tokens`")
    params = prompt.cap(params)
    run = GenerationRun(request, lambda cancel: svc.engine.complete(text, params, cancel))
    return run, await run.first(), params


def _details(last: Chunk, params: GenerationParams, stream: bool) -> dict[str, Any]:
    details: dict[str, Any] = {"finish_reason": FINISH[last.finish_reason or "length"],
                               "generated_tokens": last.completion_tokens,
                               "seed": params.seed if params.seed >= 0 and params.temperature > 0 else None}
    if stream:
        details["input_length"] = last.prompt_tokens
    else:
        # per-token ids and logprobs are not kept by the engine: TGI's lists stay empty
        details.update(prefill=[], tokens=[])
    return details


async def _generate(body: GenerateRequest, request: Request, svc: Service, model: str | None = None) -> dict:
    run, first, params = await _start(body, request, svc, model)
    chunks = await run.rest(first)
    full = bool(body.parameters.return_full_text)
    out: dict[str, Any] = {"generated_text": (body.inputs if full else "") + "".join(c.text for c in chunks)}
    if body.parameters.details:
        out["details"] = _details(chunks[-1], params, stream=False)
    return out


async def _generate_stream(body: GenerateRequest, request: Request, svc: Service, model: str | None = None):
    run, first, params = await _start(body, request, svc, model)
    eos = svc.engine.loaded.tokenizer.eos_token_id if svc.engine.loaded else None
    texts: list[str] = []
    held: list[Chunk] = []                      # one chunk behind: the last token's event is also the last event

    def event(chunk: Chunk, last: Chunk | None) -> dict[str, Any]:
        texts.append(chunk.text)
        special = chunk.finish_reason == "eos" and not chunk.text
        token = {"id": eos if special else chunk.token_id, "text": chunk.text, "logprob": None, "special": special}
        out: dict[str, Any] = {"index": len(texts), "token": token, "generated_text": None, "details": None}
        if last is not None:
            out["generated_text"] = (body.inputs if body.parameters.return_full_text else "") + "".join(texts)
            if body.parameters.details:
                out["details"] = _details(last, params, stream=True)
        return out

    def render(chunk: Chunk) -> list[dict]:
        out = [event(held.pop(), None)] if held and (chunk.finish_reason is None or chunk.text
                                                     or chunk.finish_reason == "eos") else []
        if chunk.finish_reason is None:
            held.append(chunk)
        elif held:                              # the end adds no token of its own: it closes the held one
            out.append(event(held.pop(), chunk))
        else:
            out.append(event(chunk, chunk))
        return out
    return event_stream(run, first, render, [], lambda last: [], done=False,
                        on_error=lambda exc: shaped(exc, tgi_error)[1])


@router.post("/generate")
async def generate(body: GenerateRequest, request: Request, svc: ServiceDep) -> Any:
    return await _generate(body, request, svc)


@router.post("/generate_stream")
async def generate_stream(body: GenerateRequest, request: Request, svc: ServiceDep) -> Any:
    return await _generate_stream(body, request, svc)


async def _compat(body: GenerateRequest, request: Request, svc: Service, model: str | None) -> Any:
    # the Inference API's shape: a list of one generation, or TGI's token stream with "stream": true
    if body.stream:
        return await _generate_stream(body, request, svc, model)
    return [await _generate(body, request, svc, model)]


@router.post("/")
async def compat_generate(body: GenerateRequest, request: Request, svc: ServiceDep) -> Any:
    return await _compat(body, request, svc, None)


@router.post("/models/{model_id:path}")
async def model_generate(model_id: str, body: GenerateRequest, request: Request, svc: ServiceDep) -> Any:
    """What llm-ls's `huggingface` backend calls: the Inference API's URL for one model on this server."""
    return await _compat(body, request, svc, model_id)


@router.get("/info")
async def info(svc: ServiceDep) -> dict[str, Any]:
    loaded = svc.resolve(None)
    context = loaded.info.n_positions
    return {"model_id": loaded.name, "model_sha": None, "model_dtype": loaded.dtype,
            "model_device_type": loaded.device.split(":")[0], "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 1, "max_best_of": 1, "max_stop_sequences": MAX_STOP_SEQUENCES,
            "max_input_tokens": context - 1, "max_total_tokens": context, "validation_workers": 1,
            "max_client_batch_size": 1, "router": "starcoder-webui", "version": "3.0.0", "sha": None,
            "docker_label": None}
