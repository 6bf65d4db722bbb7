"""RemoteEngine: the Engine's interface, with generation on vLLM servers; tokenizer and prompts stay here."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from backend.engine import Engine, LoadedModel, NoModelLoaded, PromptIds, chat_prompt_for, prompt_ids_for
from backend.errors import UserError
from backend.generate import (FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, Chunk, GenerationError, GenerationParams, encode,
                              fim_ids, fit_context)
from backend.checkpoint import folder_defaults
from backend.loader import load_model_config, load_tokenizer
from backend.quant_config import QuantConfig, QuantConfigError
from backend.remote.client import RemoteRequestError, RemoteUnavailable, VLLMClient
from backend.remote.compat import vllm_problems
from backend.remote.sampling import UNSUPPORTED, check_supported, finish_reason, request_body

DOWN_FOR_S = 5.0                      # a replica that failed is skipped this long, then tried again
# a sample of ordinary code: the same ids here and there means the same vocabulary and merges
_PROBE_TEXT = "def greet(name):\n    return f'Hello, {name}!'  # ünïcode\n"


class RemoteHandshakeError(UserError, ValueError):
    """The server serves something our model folder does not describe; refusing to attach."""
    http_status = 409


@dataclasses.dataclass(frozen=True)
class RemoteModelInfo:
    """What the Model tab shows in remote mode: the folder's config (no weights needed) and vLLM's view."""
    name: str
    path: Path
    quant: QuantConfig | None
    n_positions: int                  # after load: min(config n_positions, the server's max_model_len)
    layers: int
    hidden: int
    weights_files: tuple[str, ...] = ()
    estimate_bytes: int = 0           # the weights live on the server
    served_model: str | None = None
    urls: tuple[str, ...] = ()
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)   # from the folder's generation_config.json

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"engine": "remote (vLLM)", "context": self.n_positions, "layers": self.layers,
                               "hidden": self.hidden}
        if self.served_model:
            out["served model"] = self.served_model
            out["servers"] = ", ".join(self.urls)
        if self.quant is not None:
            q = self.quant
            out.update({"bits": q.bits, "group_size": q.group_size, "act_order (desc_act)": q.desc_act, "sym": q.sym})
            out["vLLM compatibility"] = "; ".join(vllm_problems(q)) or "ok"
        return out


@dataclasses.dataclass
class Replica:
    client: VLLMClient
    served_model: str | None = None   # set by the handshake
    max_model_len: int = 0
    in_flight: int = 0
    down_until: float = 0.0
    error: str = ""

    @property
    def url(self) -> str:
        return self.client.url


@dataclasses.dataclass(frozen=True)
class _Attached:
    """What the handshake established for the loaded model."""
    name: str
    path: Path
    tokenizer: Any
    eos_ids: frozenset[int]
    special_text: str                 # the FIM and end tokens, written out
    probe_ids: tuple[int, ...]        # our ids for special_text, then for _PROBE_TEXT
    served_model_wanted: str | None


class RemoteEngine:
    """Same verbs as backend.engine.Engine. No global lock: up to `max_concurrency` requests run at once
    (the server batches them); each request goes to one replica, chosen by affinity, else the least busy."""
    unsupported_settings: tuple[str, ...] = tuple(name for name, _, _ in UNSUPPORTED)
    needs_weights = False   # the server holds the weights; the folder here needs its tokenizer and config

    def __init__(self, models_dir: str | Path, urls: Sequence[str], api_key: str | None = None,
                 served_model: str | None = None, timeout: float = 60.0, max_concurrency: int = 64) -> None:
        if not urls:
            raise UserError("the remote engine needs at least one server URL: set remote_urls in settings.yaml or "
                            "start with --remote-engine http://HOST:PORT")
        self._folders = Engine(models_dir)          # list and validate model folders exactly as locally
        self.models_dir = self._folders.models_dir
        self.replicas = [Replica(VLLMClient(u, api_key, timeout)) for u in urls]
        self.served_model = served_model or None
        self.max_concurrency = max_concurrency
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._state = threading.Lock()              # replica counters and the attached model; held briefly
        self._attached: _Attached | None = None
        self._loaded: LoadedModel | None = None
        self._active_cancels: set[threading.Event] = set()

    # ------------------------------------------------------------ models on disk

    def list_models(self) -> list[str]:
        return self._folders.list_models()

    def model_path(self, name: str) -> Path:
        return self._folders.model_path(name)

    def inspect(self, name: str) -> RemoteModelInfo:
        """The folder's config (and, once attached, what the server said); no weights are needed."""
        loaded = self._loaded
        if loaded is not None and loaded.name == name:
            return loaded.info
        return self._read_folder(name)

    def _read_folder(self, name: str) -> RemoteModelInfo:
        path = self.model_path(name)
        config = load_model_config(path)
        try:
            quant = QuantConfig.from_dir(path)
        except QuantConfigError:
            quant = None                            # a dense folder, or tokenizer + config only
        generation = path / "generation_config.json"
        try:
            defaults = folder_defaults(json.loads(generation.read_text(encoding="utf-8"))) if generation.is_file() else {}
        except (OSError, ValueError):
            defaults = {}                           # a broken file suggests nothing; the app's defaults apply
        return RemoteModelInfo(name, path, quant, config.n_positions, config.n_layer, config.n_embd,
                               defaults=defaults)

    # ------------------------------------------------------------ attach (the handshake)

    @property
    def loaded(self) -> LoadedModel | None:
        return self._loaded

    def load(self, name: str, kernel: str = "auto", device: str = "auto-detect", dtype: str = "auto",
             compile: str = "auto") -> LoadedModel:
        """Attach model folder `name` to the served model: kernel, device, dtype and compile are the server's
        business."""
        start = time.perf_counter()
        info = self._read_folder(name)
        tokenizer = load_tokenizer(info.path)
        eos = {tokenizer.eos_token_id} | set(_eos_ids(info.path))
        eos.discard(None)
        fim = [t for t in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)
               if tokenizer.convert_tokens_to_ids(t) not in (None, tokenizer.unk_token_id)]
        special = fim + ([tokenizer.eos_token] if tokenizer.eos_token else [])
        probe = tuple(tokenizer.convert_tokens_to_ids(special) + tokenizer.encode(_PROBE_TEXT, add_special_tokens=False))
        attached = _Attached(name, info.path, tokenizer, frozenset(eos), "".join(special), probe, self.served_model)
        self.cancel_all()
        with self._state:
            self._loaded, self._attached = None, None
            for replica in self.replicas:
                replica.served_model, replica.max_model_len, replica.down_until = None, 0, 0.0
        failures = []
        for replica in self.replicas:
            try:
                self._handshake(replica, attached)
            except RemoteUnavailable as exc:
                self._mark_down(replica, str(exc))
                failures.append(str(exc))
        ready = [r for r in self.replicas if r.served_model]
        if not ready:
            raise RemoteUnavailable("no remote engine could be reached: " + " | ".join(failures))
        context = min([info.n_positions] + [r.max_model_len for r in ready])
        served = ready[0].served_model
        info = dataclasses.replace(info, n_positions=context, served_model=served,
                                   urls=tuple(r.url for r in self.replicas))
        kernels = {"all layers": f"vLLM ({served})"}
        with self._state:
            self._attached = attached
            self._loaded = LoadedModel(name, None, tokenizer, info, ", ".join(r.url for r in self.replicas),
                                       "remote", "vllm", kernels, time.perf_counter() - start, 0)
        return self._loaded

    def _handshake(self, replica: Replica, attached: _Attached) -> None:
        """Which model the server serves, its context, and whether its tokenizer gives our ids."""
        cards = replica.client.models()
        ids = [str(c.get("id")) for c in cards]
        wanted = attached.served_model_wanted
        if wanted:
            card = next((c for c in cards if c.get("id") == wanted), None)
            if card is None:
                raise RemoteHandshakeError(f"{replica.url} does not serve {wanted!r} (remote_model); it serves "
                                           f"{', '.join(ids) or 'nothing'}. Set remote_model to one of those.")
        elif len(cards) == 1:
            card = cards[0]
        else:
            card = next((c for c in cards if c.get("id") == attached.name
                         or Path(str(c.get("root", ""))).name == attached.name), None)
            if card is None:
                raise RemoteHandshakeError(f"{replica.url} serves {len(cards)} models ({', '.join(ids)}); set "
                                           f"remote_model to the one that matches models/{attached.name}.")
        served = str(card["id"])
        text = attached.special_text
        try:
            theirs = replica.client.tokenize(served, text) + replica.client.tokenize(served, _PROBE_TEXT)
        except RemoteRequestError as exc:
            if exc.http_status != 404:
                raise
            raise RemoteHandshakeError(
                f"{replica.url} has no POST /tokenize, which the handshake needs to check that its token ids are "
                f"ours (prompts are sent as ids); point remote_urls at vLLM's own OpenAI server (vllm serve), or "
                f"at a load balancer that passes /tokenize through.") from None
        if tuple(theirs) != attached.probe_ids:
            raise RemoteHandshakeError(
                f"{replica.url} serves {served!r}, whose tokenizer does not match models/{attached.name}: for "
                f"{text!r} + sample code it gives ids {theirs[:12]}…, ours are {list(attached.probe_ids[:12])}…. "
                f"Prompts are tokenized here and sent as ids, so they must agree: serve the same model (or its "
                f"dense copy) on that server, or load the model folder that matches it.")
        max_len = int(card.get("max_model_len") or 0)
        if max_len < 1:
            raise RemoteHandshakeError(f"{replica.url} did not report max_model_len for {served!r}; upgrade vLLM "
                                       f"(0.6 or newer reports it in /v1/models).")
        with self._state:
            replica.served_model, replica.max_model_len, replica.error = served, max_len, ""

    def unload(self) -> None:
        self.cancel_all()
        with self._state:
            self._loaded, self._attached = None, None

    def cancel_all(self) -> None:
        with self._state:
            for event in self._active_cancels:
                event.set()

    def health(self) -> list[dict[str, Any]]:
        """For the Model tab: each server, whether it answers, what it serves, how busy we keep it."""
        now = time.monotonic()
        return [{"url": r.url, "healthy": r.client.healthy(), "served_model": r.served_model,
                 "max_model_len": r.max_model_len, "in_flight": r.in_flight,
                 "skipped_for_s": round(max(0.0, r.down_until - now), 1), "error": r.error}
                for r in self.replicas]

    # ------------------------------------------------------------ generation

    def _require(self) -> tuple[LoadedModel, _Attached]:
        loaded, attached = self._loaded, self._attached
        if loaded is None or attached is None:
            raise NoModelLoaded("no model is loaded; choose one in the Model tab (or POST /v1/internal/model/load).")
        return loaded, attached

    def count_tokens(self, text: str) -> int:
        return len(encode(self._require()[0].tokenizer, text))

    def complete(self, prompt: str, params: GenerationParams, cancel: threading.Event | None = None,
                 affinity: str | None = None) -> Iterator[Chunk]:
        """Stream a continuation of `prompt`; a prompt longer than the context loses its start (reported)."""
        def make_ids(loaded: LoadedModel):
            ids = encode(loaded.tokenizer, prompt)
            if not ids:
                raise GenerationError("the prompt is empty; type some code or text to continue.")
            return fit_context(ids, params, loaded.info.n_positions)
        return self._run(make_ids, params, cancel, affinity)

    def infill(self, prefix: str, suffix: str, params: GenerationParams, order: str = "psm",
               cancel: threading.Event | None = None, affinity: str | None = None) -> Iterator[Chunk]:
        """Stream the middle: the FIM prompt is built here and sent as ids (vLLM refuses `suffix`)."""
        def make_ids(loaded: LoadedModel):
            return fim_ids(loaded.tokenizer, prefix, suffix, params, loaded.info.n_positions, order)
        return self._run(make_ids, params, cancel, affinity)

    def prompt_ids(self, prompt: str, params: GenerationParams, suffix: str | None = None,
                   order: str = "psm") -> PromptIds:
        """As the local Engine's: our tokenizer and the served context decide what fits."""
        return prompt_ids_for(self._require()[0], prompt, params, suffix, order)

    def chat_prompt(self, messages: list[dict], params: GenerationParams,
                    preamble: str | None = None) -> tuple[str, PromptIds, GenerationParams]:
        return chat_prompt_for(self._require()[0], messages, params, preamble)

    def chat(self, messages: list[dict], params: GenerationParams, preamble: str | None = None,
             cancel: threading.Event | None = None, affinity: str | None = None) -> Iterator[Chunk]:
        """The dialogue fitted to the context exactly as the local Engine fits it, generated upstream."""
        prompt, _, params = self.chat_prompt(messages, params, preamble)
        return self.complete(prompt, params, cancel, affinity)

    def _run(self, make_ids: Callable, params: GenerationParams, cancel: threading.Event | None,
             affinity: str | None) -> Iterator[Chunk]:
        cancel = cancel or threading.Event()
        with self._state:
            self._active_cancels.add(cancel)
        acquired = False
        try:
            check_supported(params)
            loaded, attached = self._require()
            ids, dropped = make_ids(loaded)
            # a slot, waited for in short steps so that Stop works while queued
            while not (acquired := self._slots.acquire(timeout=0.05)):
                if cancel.is_set():
                    return
            if cancel.is_set():
                return
            key = affinity if affinity is not None else json.dumps(ids[:64])
            yield from self._generate(attached, ids, dropped, params, cancel, key, loaded.info.n_positions)
        finally:
            if acquired:
                self._slots.release()
            with self._state:
                self._active_cancels.discard(cancel)

    def _generate(self, attached: _Attached, ids: list[int], dropped: int, params: GenerationParams,
                  cancel: threading.Event, key: str, context: int) -> Iterator[Chunk]:
        tried: set[str] = set()
        while True:
            replica = self._pick(key, tried, attached, context)
            tried.add(replica.url)
            started = False
            try:
                body = request_body(replica.served_model, ids, params, attached.eos_ids)
                # closing() ends the upstream request at once when our consumer stops early
                with contextlib.closing(replica.client.stream_completion(body, cancel)) as events:
                    for chunk in _chunks(events, len(ids), dropped, cancel):
                        started = True
                        yield chunk
                return
            except RemoteUnavailable as exc:
                self._mark_down(replica, str(exc))
                if started or cancel.is_set() or len(tried) == len(self.replicas):
                    raise
            finally:
                with self._state:
                    replica.in_flight -= 1

    def _pick(self, key: str, tried: set[str], attached: _Attached, context: int) -> Replica:
        """The replica for `key` by rendezvous hashing (the same file keeps hitting one prefix cache); the
        least busy one instead when that one is down or has a fair share of our requests in flight."""
        now = time.monotonic()
        for replica in self.replicas:               # one that was down and has had its rest: attach again
            if replica.served_model is None and replica.down_until <= now and replica.url not in tried:
                try:
                    self._handshake(replica, attached)
                except RemoteUnavailable as exc:
                    self._mark_down(replica, str(exc))
        with self._state:
            # a late joiner with a shorter max_model_len than the context we trim to would refuse long prompts
            usable = [r for r in self.replicas if r.served_model and r.down_until <= now and r.url not in tried
                      and r.max_model_len >= context]
            if not usable:
                reasons = "; ".join(f"{r.url}: {r.error or 'skipped after an earlier failure'}" for r in self.replicas)
                raise RemoteUnavailable(f"no remote engine is available ({reasons}).")
            share = max(1, -(-self.max_concurrency // len(self.replicas)))
            preferred = max(usable, key=lambda r: hashlib.sha1(f"{r.url}\0{key}".encode()).digest())
            least = min(usable, key=lambda r: r.in_flight)
            replica = preferred if preferred.in_flight < share else least
            replica.in_flight += 1
            return replica

    def _mark_down(self, replica: Replica, error: str) -> None:
        with self._state:
            replica.down_until, replica.error = time.monotonic() + DOWN_FOR_S, error


def _eos_ids(path: Path) -> list[int]:
    """generation_config.json's end ids (one or a list), which our local engine stops at too."""
    file = path / "generation_config.json"
    if not file.is_file():
        return []
    try:
        value = json.loads(file.read_text(encoding="utf-8")).get("eos_token_id")
    except (ValueError, UnicodeDecodeError):
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value]) if isinstance(v, int)]


def _chunks(events: Iterator[dict], prompt_tokens: int, dropped: int, cancel: threading.Event) -> Iterator[Chunk]:
    """vLLM's stream events → our Chunks: text deltas, then one last chunk with the finish reason and counts."""
    start = time.perf_counter()
    completion_tokens, finish, pending = 0, None, ""
    for event in events:
        usage = event.get("usage") or {}
        completion_tokens = int(usage.get("completion_tokens", completion_tokens))
        for choice in event.get("choices") or []:
            text = choice.get("text") or ""
            reason = finish_reason(choice)
            if reason is not None:
                finish, pending = reason, pending + text
            elif text:
                yield Chunk(text, prompt_tokens, completion_tokens, time.perf_counter() - start, dropped)
    if finish is None:
        finish = "cancelled" if cancel.is_set() else "length"
    elif finish == "eos":
        completion_tokens = max(0, completion_tokens - 1)      # vLLM counts the end token; we do not
    yield Chunk(pending, prompt_tokens, completion_tokens, time.perf_counter() - start, dropped, finish)
