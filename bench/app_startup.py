"""Time from `python app.py` to serving, and to the first streamed token in a headless browser."""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.browser import CHROMIUM, CHROMIUM_ARGS, free_port  # noqa: E402
from tests.helpers.models import DEMO, DEMO_NAME, demo_available, write_stand_in  # noqa: E402


def models_folder(tmp: Path) -> tuple[Path, str]:
    models = tmp / "models"
    models.mkdir()
    if demo_available():
        shutil.copytree(DEMO, models / DEMO_NAME)
        return models, "starcoder-demo"
    write_stand_in(models / DEMO_NAME)
    return models, "random stand-in (the demo model is not built yet)"


def start_app(models: Path, port: int, device: str, log: Path) -> tuple[subprocess.Popen, float]:
    """Seconds from spawning `python app.py` until its page answers 200."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--models-dir", str(models), "--port", str(port),
                             "--device", device, "--settings", str(ROOT / "settings.yaml")],
                            cwd=ROOT, stdout=log.open("a"), stderr=subprocess.STDOUT)
    while time.perf_counter() - start < 300:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                if response.status == 200:
                    return proc, time.perf_counter() - start
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("app.py did not serve within 300 s")


def first_token(browser, port: int) -> tuple[float, float]:
    """(page load → ready, Generate click → first text in the output box), in seconds."""
    page = browser.new_page()
    start = time.perf_counter()
    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_function("document.querySelector('#gen-status')?.innerText.includes('Ready')", timeout=60_000)
    ready = time.perf_counter() - start
    page.fill("#prompt textarea", "def fibonacci(n):\n")
    click = time.perf_counter()
    page.click("#generate")
    page.wait_for_function("document.querySelector('#output textarea').value.length > 0", polling=5,
                           timeout=60_000)
    ttft = time.perf_counter() - click
    page.wait_for_function("document.querySelector('#gen-status').innerText.includes('finished')", timeout=120_000)
    page.close()
    return ready, ttft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="auto-detect")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "app_startup.json"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    rows = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        models, model_note = models_folder(Path(tmp))
        log = Path(tmp) / "app.log"
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for run in range(args.runs):
            port = free_port()
            proc, serving = start_app(models, port, args.device, log)
            try:
                ready, ttft = first_token(browser, port)
            finally:
                proc.terminate()
                proc.wait(30)
            rows.append({"run": run + 1, "to_serving_s": serving, "page_ready_s": ready, "first_token_s": ttft})
            print(f"run {run + 1}: serving {serving:.2f} s, page ready {ready:.2f} s, first token {ttft:.3f} s",
                  flush=True)
        browser.close()

    keys = ("to_serving_s", "page_ready_s", "first_token_s")
    median = {k: statistics.median(r[k] for r in rows) for k in keys}
    print(f"\nmodel: {model_note}; device: {args.device}; {os.cpu_count()} CPUs; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'run':>6} | {'python app.py → serving':>24} | {'page → ready':>13} | {'Generate → 1st token':>21}")
    for r in rows + [dict(median, run="median")]:
        print(f"{r['run']:>6} | {r['to_serving_s']:>22.2f} s | {r['page_ready_s']:>11.2f} s | "
              f"{r['first_token_s'] * 1000:>18.0f} ms")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": model_note, "device": args.device, "cpus": os.cpu_count(),
                               "load_average": os.getloadavg()[0], "python": platform.python_version(),
                               "runs": rows, "median": median}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
