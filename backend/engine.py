"""The Engine: owns the loaded model and a lock; load, unload, inspect and stream. The only stateful object."""
from __future__ import annotations

import dataclasses
import gc
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from backend import decode, prompts
from backend.checkpoint import Checkpoint, ModelLoadError
from backend.compute import compute_thread
from backend.errors import GenerationError, UserError
from backend.generate import Chunk, GenerationParams, encode, fim_ids, fit_context, stream
from backend.loader import from_quantized, load_tokenizer
from backend.quant_config import QuantConfig

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
HIDDEN_DIRS = {".downloads"}
COMPILE_CACHE_DIR = ".compile-cache"     # inside models/: inductor's kernels, reused by the next load


class NoModelLoaded(UserError, RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the Model tab shows before loading: read from the folder, nothing loaded."""
    name: str
    checkpoint: Checkpoint

    @property
    def path(self) -> Path:
        return self.checkpoint.path

    @property
    def quant(self) -> QuantConfig:
        return self.checkpoint.quant

    @property
    def weights_files(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.checkpoint.files)

    @property
    def estimate_bytes(self) -> int:
        return self.checkpoint.estimate.total_bytes

    @property
    def n_positions(self) -> int:
        return self.checkpoint.config.n_positions

    @property
    def defaults(self) -> dict[str, Any]:
        """The settings the model folder suggests for itself (its generation_config.json)."""
        return dict(self.checkpoint.defaults)

    def summary(self) -> dict[str, Any]:
        q = self.quant
        return {"bits": q.bits, "group_size": q.group_size, "act_order (desc_act)": q.desc_act, "sym": q.sym,
                "checkpoint_format": q.checkpoint_format, "weights_file": ", ".join(self.weights_files),
                "context": self.n_positions, "layers": self.checkpoint.config.n_layer,
                "hidden": self.checkpoint.config.n_embd,
                "memory_estimate_gb": round(self.estimate_bytes / 1e9, 3)}


@dataclasses.dataclass
class LoadedModel:
    name: str
    model: Any
    tokenizer: Any
    info: ModelInfo
    device: str
    dtype: str
    kernel: str
    kernels: dict[str, str]
    load_seconds: float
    memory_bytes: int
    decode: str = ""                 # how tokens are decoded, e.g. "decode: compiled (inductor), compiled in 41.2 s"
    checks: tuple[str, ...] = ()     # fast kernels the load-time self-check replaced, and why
    note: str = ""                   # e.g. that the previous model was unloaded first to make room


@dataclasses.dataclass(frozen=True)
class PromptIds:
    """A request's whole prompt as the model reads it (nothing trimmed) and the context it shares with the answer."""
    ids: list[int]
    context: int

    @property
    def room(self) -> int:
        """Tokens left for the answer once the whole prompt is in."""
        return self.context - len(self.ids)

    def cap(self, params: GenerationParams) -> GenerationParams:
        """`params` with max_new_tokens lowered to the room the prompt leaves (the answer then ends with
        "length"), as llama.cpp and text-generation-webui do; a prompt that leaves no room keeps them unchanged,
        for the front door's own rule (refuse, or the engine trims the prompt)."""
        if 1 <= self.room < params.max_new_tokens:
            return dataclasses.replace(params, max_new_tokens=self.room)
        return params


def default_device() -> str:
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def check_device(device: str | None) -> str:
    """The device a load will use; one this machine lacks is the user's error, named with the ones it has."""
    if device in ("auto-detect", "", None):
        return default_device()
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    have = ["cpu"] + [f"cuda:{i}" for i in range(n_cuda)] + (["auto"] if n_cuda else [])
    if device == "cuda" and n_cuda:
        return "cuda:0"
    if device in have:
        return device
    raise ModelLoadError(f"device {device!r} is not available on this machine; choose one of "
                         f"{', '.join(['auto-detect'] + have)}.")


def free_bytes(device: str) -> int:
    """Memory free for a new model on `device` (for "auto", the first GPU's: a split is not planned here)."""
    if device.startswith("cuda") or device == "auto":
        index = int(device.partition(":")[2] or 0)
        return torch.cuda.mem_get_info(index)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            info = dict(line.split(":", 1) for line in fh)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def prompt_ids_for(loaded: LoadedModel, prompt: str, params: GenerationParams, suffix: str | None = None,
                   order: str = "psm") -> PromptIds:
    """The ids of `prompt` (with `suffix`: the FIM prompt, special tokens included) and the context they fit in.

    Front doors use it to refuse or size a request before it queues for the lock; generation trims by the
    same rules. Call it off the event loop: it tokenizes.
    """
    n_positions = loaded.info.n_positions
    context = min(params.context_length or n_positions, n_positions)
    if suffix is None:
        return PromptIds(encode(loaded.tokenizer, prompt), context)
    # an unbounded context trims nothing: whether the whole prompt fits is the caller's question
    ids, _ = fim_ids(loaded.tokenizer, prompt, suffix, GenerationParams(max_new_tokens=1), sys.maxsize, order)
    return PromptIds(ids, context)


def chat_prompt_for(loaded: LoadedModel, messages: list[dict], params: GenerationParams,
                    preamble: str | None = None) -> tuple[str, PromptIds, GenerationParams]:
    """The dialogue prompt that fits, its ids, and params capped to the room left, with the dialogue's stops.

    A small context cannot hold the whole preamble (the built-in one is ~550 tokens with the demo model's
    tokenizer): the preamble gives up its few-shot turns, then the dialogue its oldest turns, until the
    prompt leaves room for the answer (max_new_tokens, but never more than a quarter of the context). What
    is left when even the last turn alone does not fit is the caller's to refuse (room < 1).
    Call it off the event loop: it tokenizes.
    """
    context = min(params.context_length or loaded.info.n_positions, loaded.info.n_positions)
    wanted = max(1, min(params.max_new_tokens, context // 4))
    for text in prompts.dialogue_forms(messages, preamble):
        prompt = prompt_ids_for(loaded, text, params)
        if prompt.room >= wanted:
            break
    params = dataclasses.replace(prompt.cap(params), stop=tuple(params.stop) + prompts.DIALOGUE_STOPS)
    return text, prompt, params


class Engine:
    """One per process. Generation and loading take `_lock`, so requests queue instead of colliding; both run
    on one `ComputeThread`."""
    # generation settings this engine cannot honour (the UI greys them out); the local engine honours all
    unsupported_settings: tuple[str, ...] = ()
    needs_weights = True    # the weights are read here (a remote engine needs only tokenizer and config files)

    def __init__(self, models_dir: str | Path) -> None:
        self.models_dir = Path(models_dir).resolve()
        self._lock = threading.Lock()
        self._loaded: LoadedModel | None = None
        self._active_cancels: set[threading.Event] = set()
        self._cancels_lock = threading.Lock()
        self._inspected: dict[str, ModelInfo] = {}
        self._compute = compute_thread()

    # ------------------------------------------------------------ models on disk

    def list_models(self) -> list[str]:
        if not self.models_dir.is_dir():
            return []
        return sorted(p.name for p in self.models_dir.iterdir()
                      if p.is_dir() and p.name not in HIDDEN_DIRS and not p.name.startswith(".")
                      and (p / "config.json").is_file())

    def model_path(self, name: str) -> Path:
        """The folder of model `name`, which must be a plain folder name inside models/."""
        if not isinstance(name, str) or not _NAME.match(name) or name in HIDDEN_DIRS:
            raise ModelLoadError(f"{name!r} is not a valid model name: use a folder name inside "
                                 f"{self.models_dir.name}/ (letters, digits, . _ -), no paths.")
        path = (self.models_dir / name).resolve()
        if path.parent != self.models_dir:
            raise ModelLoadError(f"{name!r} points outside the models folder; refused.")
        if not path.is_dir():
            raise ModelLoadError(f"no model folder {name!r} in {self.models_dir.name}/; download it or press "
                                 f"refresh. Available: {', '.join(self.list_models()) or 'none'}.")
        return path

    def inspect(self, name: str) -> ModelInfo:
        """The folder's configs, weight files and memory estimate, without loading any weights.

        Read once and kept until a file of the folder changes, so one model choice reads its configs once.
        """
        path = self.model_path(name)
        cached = self._inspected.get(name)
        if cached is not None and cached.path == path and cached.checkpoint.is_current():
            return cached
        info = ModelInfo(name, Checkpoint.read(path))
        self._inspected[name] = info
        return info

    # ------------------------------------------------------------ load / unload

    @property
    def loaded(self) -> LoadedModel | None:
        return self._loaded

    def room_for(self, info: ModelInfo, device: str) -> bool:
        """Whether the new model fits beside the loaded one (with a margin for activations and the cache)."""
        try:
            return info.estimate_bytes * 1.25 + 512 * 2**20 < free_bytes(device)
        except (RuntimeError, OSError, ValueError):
            return False

    def load(self, name: str, kernel: str = "auto", device: str = "auto-detect", dtype: str = "auto",
             compile: str = "auto") -> LoadedModel:
        """Load `name`, replacing the current model; cancels a running generation first.

        The new model is built before the old one is released when both fit; then a failed load leaves the old
        one serving. When they do not both fit, or the old one decodes through compiled graphs (releasing
        those resets every compiled graph of the process, the new model's too), the old one goes first, and
        the result (or error) says so.
        """
        device = check_device(device)
        info = self.inspect(name)
        self.cancel_all()
        with self._lock:
            old, note = self._loaded, ""
            if old is not None and getattr(old.model, "decoder", None) is not None:
                note = f"{old.name} was unloaded first: its compiled decode graphs are released before new ones."
            elif old is not None and not self.room_for(info, device):
                note = f"{old.name} was unloaded first: there is not enough free memory on {device} for both."
            if note:
                old = None
                self._release()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            start = time.perf_counter()
            try:
                model = self._compute.call(from_quantized, info.checkpoint, device=device, kernel=kernel,
                                           torch_dtype=dtype, compile=compile,
                                           compile_cache_dir=self.models_dir / COMPILE_CACHE_DIR)
                tokenizer = load_tokenizer(info.checkpoint)
            except Exception as exc:
                if note:
                    raise ModelLoadError(f"could not load {name!r}: {exc}. {note} No model is loaded now.") from exc
                raise
            memory = sum(t.numel() * t.element_size() for t in
                         {id(t): t for t in list(model.parameters()) + list(model.buffers())}.values())
            loaded = LoadedModel(name, model, tokenizer, info, device, str(model.dtype).replace("torch.", ""),
                                 kernel, dict(model.kernel_report), time.perf_counter() - start, memory,
                                 model.decode_report.describe(), tuple(model.selfcheck_notes), note)
            del old
            self._release()                 # the old model, if it is still here
            self._loaded = loaded
            return self._loaded

    def unload(self) -> None:
        self.cancel_all()
        with self._lock:
            self._release()

    def _release(self) -> None:
        # a decoder and its model refer to each other: free the graphs, then collect the cycle now. On the
        # compute thread: CUDA graph trees (and their memory pools) belong to the thread that recorded them
        if self._loaded is not None:
            self._compute.call(decode.detach, self._loaded.model)
            self._loaded = None
            gc.collect()

    def cancel_all(self) -> None:
        with self._cancels_lock:
            for event in self._active_cancels:
                event.set()

    # ------------------------------------------------------------ generation

    def _require(self) -> LoadedModel:
        loaded = self._loaded
        if loaded is None:
            raise NoModelLoaded("no model is loaded; choose one in the Model tab (or POST /v1/internal/model/load).")
        return loaded

    def count_tokens(self, text: str) -> int:
        return len(encode(self._require().tokenizer, text))

    def prompt_ids(self, prompt: str, params: GenerationParams, suffix: str | None = None,
                   order: str = "psm") -> PromptIds:
        """The ids of `prompt` (with `suffix`: the FIM prompt) and the context they fit in; see `prompt_ids_for`."""
        return prompt_ids_for(self._require(), prompt, params, suffix, order)

    def chat_prompt(self, messages: list[dict], params: GenerationParams,
                    preamble: str | None = None) -> tuple[str, PromptIds, GenerationParams]:
        """The dialogue prompt that fits, its ids and the params for it; see `chat_prompt_for`."""
        return chat_prompt_for(self._require(), messages, params, preamble)

    def _run(self, make_ids, params: GenerationParams, cancel: threading.Event | None) -> Iterator[Chunk]:
        cancel = cancel or threading.Event()
        with self._cancels_lock:
            self._active_cancels.add(cancel)
        try:
            while True:
                # tokenizing and trimming run outside the lock: a huge prompt must not hold up everyone else
                loaded = self._require()
                ids, dropped = make_ids(loaded)
                if cancel.is_set():
                    return
                with self._lock:
                    if self._loaded is not loaded:     # swapped while we tokenized: redo it for the new model
                        continue
                    if cancel.is_set():
                        return
                    yield from self._compute.iterate(
                        lambda: stream(loaded.model, loaded.tokenizer, ids, params, cancel, dropped), cancel)
                    return
        finally:
            with self._cancels_lock:
                self._active_cancels.discard(cancel)

    def complete(self, prompt: str, params: GenerationParams, cancel: threading.Event | None = None,
                 affinity: str | None = None) -> Iterator[Chunk]:
        """Stream a continuation of `prompt`; a prompt longer than the context loses its start (reported).

        `affinity` (who asks, about which file) only matters to the remote engine, which routes by it; one
        process serves every request here."""
        def make_ids(loaded: LoadedModel):
            ids = encode(loaded.tokenizer, prompt)
            if not ids:
                raise GenerationError("the prompt is empty; type some code or text to continue.")
            return fit_context(ids, params, loaded.info.n_positions)
        return self._run(make_ids, params, cancel)

    def infill(self, prefix: str, suffix: str, params: GenerationParams, order: str = "psm",
               cancel: threading.Event | None = None, affinity: str | None = None) -> Iterator[Chunk]:
        """Stream the middle between `prefix` and `suffix` (fill-in-the-middle)."""
        def make_ids(loaded: LoadedModel):
            return fim_ids(loaded.tokenizer, prefix, suffix, params, loaded.info.n_positions, order)
        return self._run(make_ids, params, cancel)

    def chat(self, messages: list[dict], params: GenerationParams, preamble: str | None = None,
             cancel: threading.Event | None = None, affinity: str | None = None) -> Iterator[Chunk]:
        """Stream the assistant's next turn, through the tech-assistant dialogue prompt fitted to the context."""
        prompt, _, params = self.chat_prompt(messages, params, preamble)
        return self.complete(prompt, params, cancel)
