"""A local stand-in for the Hugging Face Hub's download protocol, with fault knobs for tests."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_EXTS = (".safetensors", ".bin", ".pt", ".model")


@dataclass
class Repo:
    branches: dict[str, dict[str, bytes]]  # branch -> file name -> content
    token: str | None = None               # set: the repo is gated and needs this Bearer token

    def commit(self, branch: str) -> str:
        h = hashlib.sha1(branch.encode())
        for name, data in sorted(self.branches[branch].items()):
            h.update(name.encode() + hashlib.sha256(data).digest())
        return h.hexdigest()

    def resolve(self, rev: str) -> tuple[str, dict[str, bytes]] | None:
        for branch, files in self.branches.items():
            if rev in (branch, self.commit(branch)):
                return self.commit(branch), files
        return None


@dataclass
class Faults:
    drop_after: dict[str, int] = field(default_factory=dict)   # file -> close the socket after N bytes, once
    fail_status: dict[str, list[int]] = field(default_factory=dict)  # file -> statuses for its next GETs
    corrupt: set[str] = field(default_factory=set)              # file -> flip a byte in every body


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def read_folder(folder: str | Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


class HubServer:
    """Serves repos on 127.0.0.1: a Hub origin for the API and /resolve, and a CDN origin for LFS bodies.

    The two ports are two origins, as huggingface.co and its CDN are, so clients must drop the token on
    the redirect exactly as they do against the real Hub.
    """

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.faults = Faults()
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers)
        self.lock = threading.Lock()
        self._servers = [ThreadingHTTPServer(("127.0.0.1", 0), _handler(self)) for _ in range(2)]
        for s in self._servers:
            s.daemon_threads = True
        self.url, self.cdn_url = (f"http://127.0.0.1:{s.server_address[1]}" for s in self._servers)

    def add_repo(self, repo_id: str, files: dict[str, bytes], branch: str = "main",
                 token: str | None = None) -> None:
        repo = self.repos.setdefault(repo_id, Repo({}, token))
        repo.branches[branch] = dict(files)

    def start(self) -> HubServer:
        for s in self._servers:
            threading.Thread(target=s.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        for s in self._servers:
            s.shutdown()
            s.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def gets(self, name: str) -> list[dict[str, str]]:
        """Headers of every body request for a file, in order (to see Range and Authorization)."""
        with self.lock:
            return [h for m, p, h in self.requests if m == "GET" and p.endswith("/" + name)]


def _handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            return None

        def do_HEAD(self) -> None:
            self._route(body=False)

        def do_GET(self) -> None:
            self._route(body=True)

        def _route(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            with hub.lock:
                hub.requests.append((self.command, path, {k.lower(): v for k, v in self.headers.items()}))
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path):
                return self._info(m[1], m[2])
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path):
                return self._tree(m[1], m[2])
            if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                return self._resolve(m[1], m[2], m[3], body)
            if m := re.fullmatch(r"/cdn/([^/]+/[^/]+)/([0-9a-f]{40})/(.+)", path):
                return self._blob(m[1], m[2], m[3], body)
            self._error(404, "RepoNotFound", "Not found")

        def _lookup(self, repo_id: str, rev: str) -> tuple[Repo, str, dict[str, bytes]] | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
                return None
            found = repo.resolve(rev)
            if found is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                return None
            return repo, *found

        def _info(self, repo_id: str, rev: str) -> None:
            if found := self._lookup(repo_id, rev):
                repo, commit, files = found
                self._json({"id": repo_id, "sha": commit, "private": False,
                            "gated": "manual" if repo.token else False,
                            "siblings": [{"rfilename": n} for n in sorted(files)]})

        def _tree(self, repo_id: str, rev: str) -> None:
            if found := self._lookup(repo_id, rev):
                entries = []
                for name, data in sorted(found[2].items()):
                    entry = {"type": "file", "oid": git_sha1(data), "size": len(data), "path": name}
                    if name.endswith(LFS_EXTS):
                        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                        "pointerSize": 134}
                    entries.append(entry)
                self._json(entries)

        def _resolve(self, repo_id: str, rev: str, name: str, body: bool) -> None:
            if not (found := self._lookup(repo_id, rev)):
                return
            repo, commit, files = found
            if repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}":
                has_token = self.headers.get("Authorization") is not None
                self._error(403 if has_token else 401, "GatedRepo",
                            f"Access to model {repo_id} is restricted.")
                return
            if name not in files:
                self._error(404, "EntryNotFound", f"{name} does not exist on {rev}", commit)
                return
            data = files[name]
            if name.endswith(LFS_EXTS):  # the real Hub redirects LFS bodies to its CDN
                sha256 = hashlib.sha256(data).hexdigest()
                self.send_response(302)
                self.send_header("Location", f"{hub.cdn_url}/cdn/{repo_id}/{commit}/{name}")
                self.send_header("X-Repo-Commit", commit)
                self.send_header("X-Linked-Etag", f'"{sha256}"')
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("ETag", f'W/"{git_sha1(data)[:20]}"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._send_file(name, data, f'"{git_sha1(data)}"', commit, body)

        def _blob(self, repo_id: str, commit: str, name: str, body: bool) -> None:
            repo = hub.repos.get(repo_id)
            files = repo.resolve(commit) if repo else None
            if files is None or name not in files[1]:
                self._error(404, "EntryNotFound", "No such blob")
                return
            data = files[1][name]
            self._send_file(name, data, f'"{hashlib.sha256(data).hexdigest()}"', None, body)

        def _send_file(self, name: str, data: bytes, etag: str, commit: str | None, body: bool) -> None:
            with hub.lock:
                statuses = hub.faults.fail_status.get(name) if body else None
                status = statuses.pop(0) if statuses else None
                drop = hub.faults.drop_after.pop(name, None) if body else None
            if status:
                self._error(status, None, "Service unavailable")
                return
            if name in hub.faults.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            start, total = 0, len(data)
            if m := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "")):
                start = int(m[1])
                end = int(m[2]) + 1 if m[2] else total
                if start >= total:
                    self._error(416, None, "Range not satisfiable")
                    return
                data = data[start:end]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{total}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", etag)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.end_headers()
            if not body:
                return
            if drop is not None:
                self.wfile.write(data[:drop])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)  # a dropped connection, mid-body
                self.close_connection = True
                return
            self.wfile.write(data)

        def _json(self, payload: object) -> None:
            raw = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(raw)

        def _error(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
            raw = json.dumps({"error": message}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(raw)

    return Handler
