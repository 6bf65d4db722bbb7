"""Who may use the server: the API key, the UI's logins, the request's credentials, and the login rate limit."""
from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import hmac
import os
import time
from pathlib import Path

KEY_ENV = "STARCODER_API_KEY"


@dataclasses.dataclass(frozen=True)
class Credentials:
    """The one switch: with a key or a login set, every door asks for one of them."""
    api_key: str | None = None
    logins: tuple[tuple[str, str], ...] = ()

    @property
    def locked(self) -> bool:
        return bool(self.api_key or self.logins)

    def check_login(self, user: str, password: str) -> bool:
        """The web UI's login: a configured user:pass, or (with a key set) any user name with the key as password."""
        ok = False
        for name, secret in self.logins:      # compare every entry: the time taken says nothing about which matched
            ok |= hmac.compare_digest(name.encode(), user.encode()) & hmac.compare_digest(secret.encode(),
                                                                                           password.encode())
        if self.api_key:
            ok |= hmac.compare_digest(self.api_key.encode(), password.encode())
        return ok

    def check_header(self, authorization: bytes) -> bool:
        """`Authorization: Bearer KEY`, or `Basic` with a login (or any user and the key as password)."""
        scheme, _, value = authorization.partition(b" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == b"bearer":
            return bool(self.api_key) and hmac.compare_digest(value, self.api_key.encode())
        if scheme == b"basic":
            try:
                user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return bool(sep) and self.check_login(user, password)
        return False


def read_api_key(option: str | None, key_file: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The key from --api-key, --api-key-file or $STARCODER_API_KEY (the last two keep it out of the process list)."""
    environ = os.environ if environ is None else environ
    if key_file:
        try:
            key = Path(key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SystemExit(f"--api-key-file {key_file}: {exc.strerror}") from None
        if not key:
            raise SystemExit(f"--api-key-file {key_file} is empty; put the key on its first line.")
        return key
    return option or environ.get(KEY_ENV) or None


def refusal(host: str, share: bool, credentials: Credentials, insecure: bool) -> str | None:
    """Why app.py must not start: the network (or a share link) with no key and no login, unless asked for."""
    exposed = share or host not in ("127.0.0.1", "localhost", "::1")
    if not exposed or credentials.locked:
        return None
    if insecure:
        return None
    where = "a public share link" if share else f"{host} (the network)"
    return (f"refusing to serve on {where} without any authentication: anyone who can reach it could generate, "
            f"load and unload models, overwrite saved settings and download files. Set a key (--api-key-file FILE, "
            f"${KEY_ENV} or --api-key KEY; the web UI then asks for it as the password) or a login "
            f"(--gradio-auth user:pass), or start with --insecure-no-auth if this network is yours alone.")


def api_warning(listen: bool, api_key: str | None) -> str | None:
    """The warning printed when the network is served with no key (after --insecure-no-auth), else None."""
    if listen and not api_key:
        return ("WARNING: the API listens on the network without an API key: anyone who can reach this port can "
                "generate with, load and unload models. Start with --api-key-file FILE (clients then send "
                "'Authorization: Bearer KEY'), or leave out --listen to serve only this machine.")
    return None


class LoginLimiter:
    """At most `attempts` failed UI logins per client address in `window_s`; then 429 until the window passes."""

    def __init__(self, attempts: int = 5, window_s: float = 60.0) -> None:
        self.attempts, self.window_s = attempts, window_s
        self._failures: dict[str, collections.deque] = {}

    def _recent(self, client: str, now: float) -> collections.deque:
        failures = self._failures.setdefault(client, collections.deque())
        while failures and now - failures[0] > self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[client]           # no unbounded growth from many addresses
            return collections.deque()
        return failures

    def retry_after(self, client: str) -> int:
        """Seconds until `client` may try again; 0 when it may now."""
        now = time.monotonic()
        failures = self._recent(client, now)
        if len(failures) < self.attempts:
            return 0
        return max(1, int(self.window_s - (now - failures[0])) + 1)

    def failed(self, client: str) -> None:
        self._failures.setdefault(client, collections.deque()).append(time.monotonic())
