"""Decoding at the speed of the weights: a static KV cache, an eager prefill, one compiled decode step.

The step (one token through the model, the samplers, the token appended to the device history) has
fixed shapes, so torch.compile turns it into one graph: CUDA graphs on CUDA (mode "reduce-overhead"),
inductor's C++ kernels on CPU. Only the chosen token id crosses to the host, once per token.

transformers' static cache layers serve GPTBigCode's multi-query attention as they are (they size
themselves from the one K/V head they are handed), and the model's forward traces without a graph
break. On CPU, attention reads only a window of the cache: the generation's length rounded up to a
power of two, carried as a dynamic size so one compiled graph serves every window.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from transformers.cache_utils import Cache, StaticLayer

from backend import sampling
from backend.generate import GenerationParams, _cache_kwarg
from backend.errors import UserError

COMPILE_CHOICES = ("auto", "on", "off")
# flags compiled at load: greedy and the plain sampler; rarer ones (typical_p, n-gram bans) run the
# same code eagerly on the device rather than stall a request for a compile
PRECOMPILED = (sampling.SamplerFlags(greedy=True), sampling.SamplerFlags(greedy=False))
MIN_WINDOW = 256


class CompileSettingError(UserError, ValueError):
    pass


@dataclasses.dataclass
class DecodeReport:
    """How tokens are decoded, for the load status: the path, its compile time, why not compiled."""
    path: str                     # "compiled (CUDA graphs)", "compiled (inductor)" or "eager"
    compile_seconds: float = 0.0
    reason: str = ""              # why the eager path serves (setting off, or the failure)

    def describe(self) -> str:
        if self.path == "eager":
            return f"decode: eager ({self.reason})" if self.reason else "decode: eager"
        return f"decode: {self.path}, compiled in {self.compile_seconds:.1f} s"


def check_setting(setting: str) -> None:
    if setting not in COMPILE_CHOICES:
        raise CompileSettingError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, got {setting!r}")


def wants_compile(setting: str, device: torch.device) -> bool:
    """`auto` compiles where it measured faster and loads in reasonable time (see bench/RESULTS.md)."""
    check_setting(setting)
    if setting == "auto":
        return device.type == "cuda"
    return setting == "on"


def use_cache_dir(path: str | os.PathLike | None) -> None:
    """Keep inductor's compiled kernels in `path`, so the next load of the model reuses them.

    A directory the user chose (TORCHINDUCTOR_CACHE_DIR) wins. Importing torch._dynamo writes torch's own
    default (a temporary folder) into that variable, so a value equal to the default is not a choice.
    """
    if path is None:
        return
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or current == default_cache_dir():
        Path(path).mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(path).resolve())


class WindowLayer(StaticLayer):
    """A static layer whose attention sees the first `window.shape[0]` positions (the rest is unused).

    The window is a tensor's size, not an int attribute, so torch.compile treats it as a dynamic
    dimension instead of recompiling for each value.
    """

    window: torch.Tensor

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        n = self.window.shape[0]
        return keys[:, :, :n], values[:, :, :n]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.window.shape[0], 0


def window_for(length: int, max_len: int) -> int:
    """The power of two ≥ `length` (at least MIN_WINDOW), at most max_len."""
    return min(max_len, max(MIN_WINDOW, 1 << max(0, length - 1).bit_length()))


class Decoder:
    """The static cache, the sampler's device buffers and the step functions of one loaded model."""

    def __init__(self, model, max_len: int | None = None) -> None:
        config = model.config
        self.model = model
        self.device = model.get_input_embeddings().weight.device
        self.max_len = max_len or config.n_positions
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        head_dim = config.n_embd // config.n_head
        kv_heads = 1 if config.multi_query else config.n_head
        self.cache = Cache(layers=[WindowLayer(self.max_len) for _ in range(config.n_layer)])
        self.cache.early_initialization(1, kv_heads, head_dim, model.dtype, self.device)
        # on CUDA the whole cache is one fixed window: attention over 8k positions costs ~2 % of a
        # token's weight reads there, and a static shape keeps one CUDA graph
        self.windowed = self.device.type != "cuda"
        self._windows: dict[int, torch.Tensor] = {}
        self.state = sampling.SamplerState(self.vocab_size, self.max_len, self.device)
        for buf in self.state.buffers():
            # a CUDA graph replays against fixed addresses; these are written in place between steps
            torch._dynamo.mark_static_address(buf)
        self.cache_kwarg = _cache_kwarg(model)
        self.forward: Callable[[torch.Tensor], torch.Tensor] = self._forward
        self.choose: Callable = sampling.choose
        self.report = DecodeReport("eager")
        self.cuda_graphs = False

    def _forward(self, token: torch.Tensor) -> torch.Tensor:
        # token: [1, 1] -> logits of that position [1, V]
        return self.model(input_ids=token, use_cache=True, logits_to_keep=1,
                          **{self.cache_kwarg: self.cache}).logits[:, -1, :]

    # ------------------------------------------------------------ compile

    def compile(self, backend: str = "inductor") -> DecodeReport:
        """Compile and warm up the step for the flags in PRECOMPILED; a failure leaves the eager step.

        `backend="aot_eager"` traces the same graphs without generating code (tests use it to check
        tracing quickly on many small models).
        """
        cuda = self.device.type == "cuda" and backend == "inductor"
        options = {}
        if backend == "inductor":
            # the shapes are fixed by construction: checking every input's size and alignment on each
            # call is host work per token; on CUDA the step is captured (what mode="reduce-overhead" sets)
            options = dict(options={"size_asserts": False, "alignment_asserts": False, "scalar_asserts": False,
                                    "triton.cudagraphs": cuda})
        options.update(fullgraph=True, backend=backend)
        start = time.perf_counter()
        try:
            self.forward = torch.compile(self._forward, **options)
            self.choose = torch.compile(sampling.choose, **options)
            self.cuda_graphs = cuda
            self._warm_up()
        except Exception as exc:  # any compiler or capture error: the eager step still works
            self.forward, self.choose, self.cuda_graphs = self._forward, sampling.choose, False
            torch._dynamo.reset()
            self.report = DecodeReport("eager", reason=f"compile failed, {type(exc).__name__}: "
                                                       f"{str(exc).splitlines()[0][:300] if str(exc) else ''}")
            return self.report
        self.report = DecodeReport("compiled (CUDA graphs)" if cuda else f"compiled ({backend})",
                                   time.perf_counter() - start)
        return self.report

    @torch.inference_mode()
    def _warm_up(self) -> None:
        # CUDA graph trees record on the third call, so three steps per flag set; the first call also
        # tunes the Triton tiles, before any capture
        for flags in PRECOMPILED:
            params = GenerationParams(max_new_tokens=4, temperature=0.0 if flags.greedy else 1.0)
            for _ in self.tokens([0], params, seed=0):
                pass

    def close(self) -> None:
        """Drop compiled graphs (they hold the model's tensors) and the cache."""
        self.forward = self.choose = None
        torch._dynamo.reset()
        self.cache = None

    # ------------------------------------------------------------ generating

    def _set_window(self, length: int) -> None:
        size = window_for(length, self.max_len) if self.windowed else self.max_len
        if size not in self._windows:
            carrier = torch.empty(size, dtype=torch.uint8, device=self.device)
            if self.windowed:
                torch._dynamo.mark_dynamic(carrier, 0)
            self._windows[size] = carrier
        for layer in self.cache.layers:
            layer.window = self._windows[size]
            layer.cumulative_length.zero_()      # older entries stay but are masked out by position

    @torch.inference_mode()
    def prefill(self, prompt_ids: list[int], max_new_tokens: int) -> torch.Tensor:
        """Run the prompt through the model (eager: its length varies); logits of its last position [1, V]."""
        self._set_window(len(prompt_ids) + max_new_tokens)
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        return self.model(input_ids=ids, use_cache=True, logits_to_keep=1,
                          **{self.cache_kwarg: self.cache}).logits[:, -1, :]

    @torch.inference_mode()
    def tokens(self, prompt_ids: list[int], params, seed: int) -> Iterator[int]:
        """Token ids, one per `next()`; each costs one step on the device and one id copied to the host."""
        self.state.start(prompt_ids, params, seed)
        flags = sampling.SamplerFlags.of(params)
        choose = self.choose if flags in PRECOMPILED else sampling.choose
        token = choose(self.prefill(prompt_ids, params.max_new_tokens), self.state, flags)   # [1]
        for i in range(params.max_new_tokens):
            value = int(token)                   # the one host sync: detokenizing needs the id
            yield value
            if i + 1 < params.max_new_tokens:
                with self._stance():
                    token = choose(self.forward(self._step_input(token)), self.state, flags)

    def _stance(self):
        # Once compiled, the shapes cannot change within this model's life: evaluating only the guards
        # that tell our graphs apart saves the per-call check of every parameter (ms per token on CPU)
        compiled = self.report.path != "eager"
        return torch.compiler.set_stance("default", skip_guard_eval_unsafe=compiled)

    def _step_input(self, token: torch.Tensor) -> torch.Tensor:
        # [1] -> [1, 1]; a copy, since a CUDA graph's next replay overwrites its outputs
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return token.clone().view(1, 1)


def attach(model, setting: str = "auto", cache_dir: str | os.PathLike | None = None) -> DecodeReport:
    """Give `model` a compiled Decoder (`model.decoder`) where `setting` asks for one; never raises on a
    compile failure: the model then decodes on the eager path and the report says why."""
    params = list(model.parameters())
    devices = {p.device for p in params}
    device = params[0].device
    model.decoder = None
    if not wants_compile(setting, device):
        why = "compile off" if setting == "off" else f"compile auto: off on {device.type} (see bench/RESULTS.md)"
        return DecodeReport("eager", reason=why)
    if len(devices) > 1:
        return DecodeReport("eager", reason="the model is spread over several devices")
    use_cache_dir(cache_dir)
    try:
        decoder = Decoder(model)
    except Exception as exc:  # e.g. a transformers whose cache classes differ: decode eagerly, say why
        return DecodeReport("eager", reason=f"no static cache, {type(exc).__name__}: {str(exc)[:200]}")
    report = decoder.compile()
    if report.path != "eager":
        model.decoder = decoder
    else:
        decoder.close()
    return report


def detach(model) -> None:
    """Free a model's decoder (its compiled graphs and cache) before the model is dropped."""
    decoder = getattr(model, "decoder", None)
    if decoder is not None:
        decoder.close()
        model.decoder = None
