"""HTTP client for one vLLM server (its OpenAI-compatible API): models, tokenize, streamed completions, health."""
from __future__ import annotations

import contextlib
import json
import threading
from typing import Any, Iterator

import httpx

from backend.errors import UserError
from backend.generate import GenerationError


class RemoteUnavailable(UserError, ConnectionError):
    """The remote engine cannot be reached (or answered with a server error); the API answers 503."""
    http_status = 503


class RemoteRequestError(GenerationError):
    """The remote engine refused a request (4xx); its message is passed on with the status."""

    def __init__(self, message: str, http_status: int = 400) -> None:
        super().__init__(message)
        self.http_status = http_status


def _what_to_check(url: str) -> str:
    return (f"check that the vLLM server at {url} is running (`curl {url}/health`), that this machine can reach "
            f"it, and that remote_urls (or --remote-engine) names it with scheme and port")


class VLLMClient:
    """One base URL. Thread-safe: httpx's connection pool is shared by the request threads."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.url = base_url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise UserError(f"remote engine URL {base_url!r} needs a scheme, e.g. http://{base_url}")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # connect fails fast (a down replica must not stall a request that another one can serve);
        # read is the longest silence allowed between two streamed pieces
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
                                  limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------ plain requests

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, self.url + path, **kwargs)
        except httpx.TransportError as exc:
            raise RemoteUnavailable(f"the remote engine at {self.url} is unreachable ({type(exc).__name__}: "
                                    f"{exc}); {_what_to_check(self.url)}.") from None
        self._raise_for_status(response)
        return response

    def _raise_for_status(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        message = _error_message(response)
        if response.status_code in (401, 403):
            raise RemoteUnavailable(f"the remote engine at {self.url} refused our API key ({response.status_code}: "
                                    f"{message}); set remote_api_key to the key its server was started with "
                                    f"(vLLM's --api-key).")
        if response.status_code >= 500:
            raise RemoteUnavailable(f"the remote engine at {self.url} failed ({response.status_code}: {message}); "
                                    f"see its log.")
        raise RemoteRequestError(f"the remote engine at {self.url} refused the request ({response.status_code}): "
                                 f"{message}", response.status_code)

    def healthy(self) -> bool:
        try:
            return self._http.get(self.url + "/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def models(self) -> list[dict[str, Any]]:
        """The served models: vLLM's cards carry `id`, `root` (the folder it loaded) and `max_model_len`."""
        return list(self._request("GET", "/v1/models").json().get("data", []))

    def tokenize(self, model: str, text: str) -> list[int]:
        body = {"model": model, "prompt": text, "add_special_tokens": False}
        return list(self._request("POST", "/tokenize", json=body).json()["tokens"])

    def running_requests(self) -> float:
        """vLLM's gauge of requests being generated now (Prometheus text from /metrics)."""
        total = 0.0
        for line in self._request("GET", "/metrics").text.splitlines():
            if line.startswith("vllm:num_requests_running"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    # ------------------------------------------------------------ streamed completion

    def stream_completion(self, body: dict[str, Any], cancel: threading.Event) -> Iterator[dict[str, Any]]:
        """POST /v1/completions with stream=true; yields each event's JSON. Setting `cancel` closes the
        connection, which is how vLLM learns to abort the request (it frees the sequence at once)."""
        body = dict(body, stream=True)
        try:
            with self._http.stream("POST", self.url + "/v1/completions", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    self._raise_for_status(response)
                with _close_when_set(cancel, response):
                    for line in response.iter_lines():
                        if cancel.is_set():
                            return
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            return
                        event = json.loads(data)
                        if "error" in event and "choices" not in event:
                            raise RemoteRequestError(f"the remote engine at {self.url} failed during generation: "
                                                     f"{_message_of(event)}", 500)
                        yield event
        except (httpx.TransportError, httpx.StreamError) as exc:
            if cancel.is_set():                 # our own close() interrupted the read
                return
            if isinstance(exc, httpx.StreamError):
                raise
            raise RemoteUnavailable(f"the remote engine at {self.url} dropped the connection ({type(exc).__name__}: "
                                    f"{exc}); {_what_to_check(self.url)}.") from None


@contextlib.contextmanager
def _close_when_set(cancel: threading.Event, response: httpx.Response) -> Iterator[None]:
    """Close `response` from a watcher thread as soon as `cancel` is set, even while a read blocks
    (a long prefill sends nothing for seconds)."""
    finished = threading.Event()

    def watch() -> None:
        while not finished.is_set():
            if cancel.wait(0.05):
                with contextlib.suppress(Exception):
                    response.close()
                return

    watcher = threading.Thread(target=watch, name="remote-cancel", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        finished.set()


def _message_of(payload: Any) -> str:
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict):
            return str(error.get("message") or error)
        if payload.get("message"):
            return str(payload["message"])
        return str(error)
    return str(payload)


def _error_message(response: httpx.Response) -> str:
    try:
        return _message_of(response.json())
    except (json.JSONDecodeError, ValueError):
        return response.text[:500] or response.reason_phrase
