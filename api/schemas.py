"""Request bodies and response shapes shared by the API's routes: OpenAI's completions and chat (with Tabby's
segments), llama.cpp's /completion and /infill, text-generation-webui's token routes."""
from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from backend.generate import Chunk, GenerationParams
from backend.settings import GENERATION_KEYS
from backend.settings.table import python_type


class _Body(BaseModel):
    # editor plugins send fields we do not use (user, logit_bias, cache_prompt, id_slot, ...): ignore, not 400
    model_config = ConfigDict(extra="ignore")


# generation settings that OpenAI's own fields carry (max_new_tokens is its max_tokens)
OPENAI_OWN = ("max_new_tokens", "temperature", "top_p", "stop", "seed")
# every other generation setting of the settings table is a field of its own, as text-generation-webui accepts
# them (the openai client sends them through extra_body); a new setting appears here by itself
_Samplers = create_model("_Samplers", __base__=_Body, **{
    key: (python_type(GenerationParams, key) | None, None) for key in GENERATION_KEYS if key not in OPENAI_OWN})


class StreamOptions(_Body):
    include_usage: bool = False


class _OpenAIRequest(_Samplers):
    """The fields /v1/completions and /v1/chat/completions share."""
    model: str | None = None
    max_tokens: int | None = None               # None: the model's saved max_new_tokens
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None


class Segments(_Body):
    """Tabby's code around the cursor (its declarations and snippets are not used)."""
    prefix: str = ""
    suffix: str | None = None
    filepath: str | None = None


class CompletionRequest(_OpenAIRequest):
    prompt: str | list[str] | list[int] | list[list[int]] = ""
    segments: Segments | None = None            # Tabby's body shares the path: segments and no prompt
    language: str | None = None
    suffix: str | None = None                   # a string, even "", asks for fill-in-the-middle
    best_of: int | None = None
    echo: bool = False
    logprobs: int | None = None
    fim_order: Literal["psm", "spm"] | None = None


class ChatMessage(_Body):
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """Plain text; OpenAI's list-of-parts content keeps only its text parts."""
        if isinstance(self.content, list):
            return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")
        return self.content or ""


class ChatRequest(_OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None


class ExtraChunk(_Body):
    filename: str = ""
    text: str = ""


class _LlamaRequest(_Body):
    """What llama.cpp server's /completion and /infill share; unknown fields (cache_prompt, samplers...) are
    ignored."""
    n_predict: int | None = None                # -1: until EOS or the end of the context; 0: no generation
    max_tokens: int | None = None               # llama.cpp's alias of n_predict
    n_indent: int = 0                           # lines after the first need at least this much indentation
    t_max_predict_ms: int = 0                   # once spent, generation ends at the next newline
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repeat_penalty: float | None = None
    seed: int | None = None                     # -1 or 4294967295: random, as in llama.cpp
    stop: list[str] | None = None
    stream: bool = False


class InfillRequest(_LlamaRequest):
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[ExtraChunk] = Field(default_factory=list)
    prompt: str = ""


class LlamaCompletionRequest(_LlamaRequest):
    prompt: str | list[int | str] = ""


class TokenCountRequest(_Body):
    text: str


class DecodeRequest(_Body):
    tokens: list[int]


class LoadRequest(_Body):
    model_name: str
    kernel: str | None = None
    device: str | None = None
    dtype: str | None = None
    compile: str | None = None      # auto | on | off


# ---------------------------------------------------------------- OpenAI responses

# "cancelled" (the model was swapped or the server stopped meanwhile) is not an OpenAI value, but "length" would
# tell a client that max_tokens was reached; clients show an unknown reason as it is
OPENAI_FINISH = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "cancelled"}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(last: Chunk) -> dict[str, int]:
    return {"prompt_tokens": last.prompt_tokens, "completion_tokens": last.completion_tokens,
            "total_tokens": last.prompt_tokens + last.completion_tokens}


def completion(rid: str, model: str, text: str, last: Chunk) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None,
                         "finish_reason": OPENAI_FINISH[last.finish_reason or "length"]}],
            "usage": usage(last)}


def completion_chunk(rid: str, model: str, text: str, finish: str | None) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None,
                         "finish_reason": OPENAI_FINISH[finish] if finish else None}]}


def chat(rid: str, model: str, text: str, last: Chunk) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": OPENAI_FINISH[last.finish_reason or "length"]}],
            "usage": usage(last)}


def chat_chunk(rid: str, model: str, delta: dict[str, str], finish: str | None) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": OPENAI_FINISH[finish] if finish else None}]}


def usage_chunk(rid: str, model: str, obj: str, last: Chunk) -> dict[str, Any]:
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [],
            "usage": usage(last)}


# ---------------------------------------------------------------- llama.cpp responses

_STOP_TYPE = {"eos": "eos", "stop": "word", "length": "limit", "cancelled": "none"}


def infill_final(model: str, content: str, first: Chunk, last: Chunk, params: GenerationParams,
                 n_ctx: int, stream: bool) -> dict[str, Any]:
    """llama.cpp's final /completion object. prompt_ms is the time to the first text (prefill + first token)."""
    reason = last.finish_reason or "length"
    prompt_ms = first.elapsed_s * 1000
    predicted_ms = max(last.elapsed_s * 1000 - prompt_ms, 0.0)
    n_pred = last.completion_tokens
    return {
        "index": 0, "id_slot": 0, "content": content, "stop": True, "model": model,
        "tokens_predicted": n_pred, "tokens_evaluated": last.prompt_tokens,
        # what the KV cache held when generation ended; nothing is kept for the next request
        "tokens_cached": last.prompt_tokens + n_pred,
        "truncated": last.truncated_tokens > 0, "has_new_line": "\n" in content,
        "stop_type": _STOP_TYPE[reason], "stopped_eos": reason == "eos", "stopped_word": reason == "stop",
        "stopped_limit": reason == "length", "stopping_word": "",
        "generation_settings": {"n_ctx": n_ctx, "n_predict": params.max_new_tokens, "model": model,
                                "seed": params.seed, "temperature": params.temperature, "top_k": params.top_k,
                                "top_p": params.top_p, "min_p": params.min_p, "typical_p": params.typical_p,
                                "repeat_penalty": params.repetition_penalty, "stop": list(params.stop),
                                "stream": stream},
        "timings": {"prompt_n": last.prompt_tokens, "prompt_ms": prompt_ms,
                    "prompt_per_token_ms": prompt_ms / max(last.prompt_tokens, 1),
                    "prompt_per_second": last.prompt_tokens / (prompt_ms / 1000) if prompt_ms else 0.0,
                    "predicted_n": n_pred, "predicted_ms": predicted_ms,
                    "predicted_per_token_ms": predicted_ms / max(n_pred, 1),
                    "predicted_per_second": n_pred / (predicted_ms / 1000) if predicted_ms else 0.0},
    }


def infill_partial(content: str, last: Chunk) -> dict[str, Any]:
    return {"index": 0, "id_slot": 0, "content": content, "stop": False,
            "tokens_predicted": last.completion_tokens, "tokens_evaluated": last.prompt_tokens}
