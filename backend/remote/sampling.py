"""Our GenerationParams → a vLLM /v1/completions body, and vLLM's finish reasons → ours."""
from __future__ import annotations

from typing import Any

from backend.generate import GenerationError, GenerationParams


class UnsupportedParameter(GenerationError):
    """A setting the remote engine cannot honour; refused rather than dropped (the API answers 400)."""
    http_status = 400


# (field, value that means "off", why vLLM cannot do it): vLLM's sampler has no typical (locally
# typical) sampling and no n-gram ban; a silently ignored setting would change the output unseen
UNSUPPORTED = (
    ("typical_p", 1.0, "vLLM's sampler has no typical sampling"),
    ("no_repeat_ngram_size", 0, "vLLM has no n-gram ban"),
)


def unsupported(params: GenerationParams) -> list[str]:
    """Names of the settings in `params` that are on and that the remote engine cannot honour."""
    return [name for name, off, _ in UNSUPPORTED if getattr(params, name) != off]


def check_supported(params: GenerationParams) -> None:
    for name, off, why in UNSUPPORTED:
        value = getattr(params, name)
        if value != off:
            raise UnsupportedParameter(f"{name} is not supported by the remote engine ({why}); set {name} to "
                                       f"{off} (off), or switch to the local engine (engine: local).")


def request_body(model: str, prompt_ids: list[int], params: GenerationParams,
                 eos_ids: frozenset[int]) -> dict[str, Any]:
    """The completion request: the prompt as token ids (built and trimmed by our code), never `suffix`."""
    check_supported(params)
    body: dict[str, Any] = {
        "model": model,
        "prompt": list(prompt_ids),
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,                  # 0 is off for both
        "min_p": params.min_p,
        "repetition_penalty": params.repetition_penalty,
        # our engine ends at the tokenizer's and generation_config's end ids; so must the server
        "stop_token_ids": sorted(eos_ids),
        "skip_special_tokens": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    if params.stop:
        body["stop"] = list(params.stop)
        body["include_stop_str_in_output"] = False
    if params.seed >= 0:
        body["seed"] = params.seed
    return body


def finish_reason(choice: dict[str, Any]) -> str | None:
    """vLLM says "stop" both for an end token and for a stop string (then `stop_reason` is the string)."""
    reason = choice.get("finish_reason")
    if reason is None:
        return None
    if reason == "stop":
        return "stop" if isinstance(choice.get("stop_reason"), str) else "eos"
    if reason == "length":
        return "length"
    if reason == "abort":
        return "cancelled"
    return reason
