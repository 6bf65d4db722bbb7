"""Issue 10's measures against a running app.py: auth, Host, cross-site form, big FIM prefixes, concurrent saves,
a 50 MB settings file, 20 concurrent streams. Prints a table and writes JSON.

    python bench/hardening_probes.py [--root CHECKOUT] [--json out.json] [--skip fim10]

--root runs another checkout's app.py (e.g. an export of an older commit) with the same probes. Each server
runs on the demo model copied into a temporary models folder; a probe that hangs is cut at --timeout seconds
and its server killed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parents[1]
KEY = "probe-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path, models: Path, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(models / f"server-{self.port}.log", "w")
        cmd = [sys.executable, str(root / "app.py"), "--models-dir", str(models), "--port", str(self.port),
               "--device", "cpu", "--api", *args]
        self.start = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=root, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, **(env or {})))
        self.startup_s = self.wait()

    def wait(self, timeout: float = 300) -> float:
        while time.perf_counter() - self.start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/", timeout=2).status_code < 500:
                    return time.perf_counter() - self.start
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError("app.py did not start")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def timed(fn, timeout: float):
    """(seconds, result or exception text); a call past `timeout` is reported as such."""
    start = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # a probe reports, never stops the run
        result = f"{type(exc).__name__}"
    return round(time.perf_counter() - start, 2), result


def probe_auth(server: Server) -> dict:
    routes = [("GET", "/config"), ("POST", "/gradio_api/queue/join"), ("POST", "/gradio_api/cancel"),
              ("POST", "/gradio_api/reset"), ("GET", "/v1/models"), ("POST", "/v1/internal/model/unload")]
    codes = {f"{m} {p}": httpx.request(m, server.url + p, json={}, timeout=30).status_code for m, p in routes}
    # 422 means the route ran and only disliked the empty body: the door was open
    return {"unauthenticated_2xx": sum(200 <= c < 300 for c in codes.values()),
            "unauthenticated_not_refused": sum(c not in (401, 403) for c in codes.values()), "routes": codes}


def probe_host_and_form(server: Server, headers: dict) -> dict:
    host = httpx.get(server.url + "/v1/models", headers={"Host": "evil.example", **headers}, timeout=30).status_code
    form = httpx.post(server.url + "/v1/internal/model/unload", data={"a": "1"}, timeout=30,
                      headers={"Origin": "http://evil.example"}).status_code
    info = httpx.get(server.url + "/v1/internal/model/info", headers=headers, timeout=30).json()
    if not info.get("loaded"):
        httpx.post(server.url + "/v1/internal/model/load", json={"model_name": "starcoder-demo", "device": "cpu"},
                   headers=headers, timeout=120)
    return {"foreign_host_status": host, "cross_site_form_status": form, "model_unloaded_by_form": not info["loaded"]}


def probe_fim(server: Server, megabytes: float, timeout: float) -> dict:
    """The big FIM request, and another client's short completions sent every second meanwhile (its worst wait)."""
    prefix = ("def f(x):\n    return x + 1\n" * int(megabytes * 2**20 / 28 + 1))[: int(megabytes * 2**20)]
    waits: list = []
    finished = threading.Event()

    def other_client():
        while not finished.is_set():
            waits.append(timed(lambda: httpx.post(server.url + "/v1/completions", timeout=timeout, json={
                "prompt": "def g():", "max_tokens": 4}).status_code, timeout))
            finished.wait(1.0)
    thread = threading.Thread(target=other_client)
    thread.start()
    seconds, status = timed(lambda: httpx.post(server.url + "/infill", timeout=timeout, json={
        "input_prefix": prefix, "input_suffix": "\n", "n_predict": 4}).status_code, timeout)
    finished.set()
    thread.join(timeout + 5)
    worst = max(waits, default=(None, None))
    return {"fim_s": seconds, "fim_status": status, "other_requests": len(waits), "other_worst_wait_s": worst[0],
            "other_worst_status": worst[1]}


def probe_streams(server: Server, n: int = 20) -> dict:
    rss_before = server.rss_mb()
    times, served = [], []

    def one():
        start = time.perf_counter()
        try:
            with httpx.stream("POST", server.url + "/v1/completions", timeout=300,
                              json={"prompt": "def fib(n):", "max_tokens": 32, "stream": True}) as r:
                ok = r.status_code == 200 and any("[DONE]" in line for line in r.iter_lines())
        except httpx.HTTPError:
            ok = False
        times.append(time.perf_counter() - start)
        served.append(ok)
    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    times.sort()
    return {"served": sum(served), "of": n, "p50_s": round(statistics.median(times), 2),
            "p95_s": round(times[int(0.95 * (len(times) - 1))], 2), "rss_before_mb": round(rss_before),
            "rss_after_mb": round(server.rss_mb())}


def probe_saves(root: Path, folder: Path) -> dict:
    """Two sessions each saving 10 models at once, through the checkout's own Settings."""
    code = ("import sys, threading; sys.path.insert(0, sys.argv[1]); from backend.settings import Settings\n"
            "s = Settings.load(None, sys.argv[2])\n"
            "def session(n):\n    for i in range(10): s.save_for_model(f'{n}-{i}', {'top_k': i})\n"
            "ts = [threading.Thread(target=session, args=(n,)) for n in 'ab']\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n"
            "t = Settings.load(None, sys.argv[2])\n"
            "print(sum(t.saved_for(f'{n}-{i}') != {'top_k': i} for n in 'ab' for i in range(10)))")
    lost = [int(subprocess.run([sys.executable, "-c", code, str(root), str(folder / f"saves{k}")], cwd=root,
                               capture_output=True, text=True, check=True).stdout) for k in range(3)]
    return {"trials": len(lost), "settings_lost": lost}


def probe_big_settings(root: Path, models: Path, megabytes: int) -> dict:
    entry = {"temperature": 0.2, "top_k": 5, "stop": ["x" * 200]}
    with open(models / "config-user.yaml", "w") as fh:
        i = 0
        while fh.tell() < megabytes * 2**20:
            fh.write(f'"model-{i}": {json.dumps(entry)}\n')
            i += 1
    server = Server(root, models)
    try:
        per_request = [timed(lambda: httpx.post(server.url + "/v1/completions", timeout=600, json={
            "prompt": "def f():", "max_tokens": 1}).status_code, 600)[0] for _ in range(2)]
        return {"startup_s": round(server.startup_s, 1), "per_request_s": per_request}
    finally:
        server.stop()
        (models / "config-user.yaml").unlink(missing_ok=True)


class Results(dict):
    """Each probe's result printed (and the JSON rewritten) as it arrives: a later hang loses nothing."""

    def __init__(self, path: Path | None, root: Path) -> None:
        super().__init__(root=str(root))
        self.path = path

    def __setitem__(self, name, value) -> None:
        super().__setitem__(name, value)
        print(f"{name:<12} {json.dumps(value)}", flush=True)
        if self.path:
            self.path.write_text(json.dumps(self, indent=2))

    def done(self) -> None:
        print(json.dumps(self, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=HERE, help="the checkout whose app.py is probed")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--server-args", default="", help="more app.py options, e.g. '--max-body-mb 16'")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a hanging probe is cut")
    parser.add_argument("--skip", default="", help="comma-separated probes to skip: auth,form,streams,fim1,fim10,"
                                                   "saves,settings50")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    root = args.root.resolve()
    results = Results(args.json, root)
    with tempfile.TemporaryDirectory(prefix="probes-") as tmp:
        models = Path(tmp)
        shutil.copytree(HERE / "models" / "starcoder-demo", models / "starcoder-demo")
        if "auth" not in skip:
            server = Server(root, models, "--api-key", KEY)
            try:
                results["auth"] = probe_auth(server)
            finally:
                server.stop()
        extra = args.server_args.split()
        server = Server(root, models, *extra)
        try:
            if "form" not in skip:
                results["host_form"] = probe_host_and_form(server, {})
            if "streams" not in skip:
                results["streams"] = probe_streams(server)
            for name, mb in (("fim1", 1), ("fim10", 10)):
                if name not in skip:
                    results[name] = probe_fim(server, mb, args.timeout)
                    if results[name]["fim_s"] >= args.timeout:      # hung: the next probe needs a fresh server
                        server.proc.kill()
                        server.stop()
                        server = Server(root, models, *extra)
        finally:
            server.stop()
        if "saves" not in skip:
            results["saves"] = probe_saves(root, models)
        if "settings50" not in skip:
            results["settings50"] = probe_big_settings(root, models, 50)
    results.done()


if __name__ == "__main__":
    main()
