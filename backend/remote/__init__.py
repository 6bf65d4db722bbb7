"""Remote mode: generation on vLLM servers, with our tokenizer, prompts, settings and front doors."""
from backend.remote.client import RemoteRequestError, RemoteUnavailable, VLLMClient
from backend.remote.engine import RemoteEngine, RemoteHandshakeError
from backend.remote.sampling import UnsupportedParameter

__all__ = ["RemoteEngine", "RemoteHandshakeError", "RemoteRequestError", "RemoteUnavailable", "UnsupportedParameter",
           "VLLMClient"]
