"""Command line entry point: parse options, build the Engine and the UI, mount the API, serve."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEMO_MODEL = "starcoder-demo"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="StarCoder WebUI: a browser UI and OpenAI-compatible API for GPTQ "
                                            "StarCoder models.")
    p.add_argument("--model", help=f"model folder to load at start (default: {DEMO_MODEL} when present)")
    p.add_argument("--models-dir", default=str(ROOT / "models"), help="folder holding one sub-folder per model")
    p.add_argument("--settings", default=str(ROOT / "settings.yaml"), help="YAML file with the app's defaults")
    p.add_argument("--listen", action="store_true", help="listen on 0.0.0.0 (the local network), not 127.0.0.1")
    p.add_argument("--listen-host", help="the host name or address to listen on (overrides --listen)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="make a public gradio.live link")
    p.add_argument("--gradio-auth", help="user:pass (several separated by commas) to log in to the UI")
    p.add_argument("--gradio-auth-path", help="file with user:pass entries, one per line or comma separated")
    p.add_argument("--api", action="store_true", help="serve the OpenAI-compatible API under /v1 as well")
    p.add_argument("--api-key", help="require this key (Authorization: Bearer …) on API requests")
    p.add_argument("--nowebui", action="store_true", help="serve only the API, without the browser UI")
    p.add_argument("--kernel", help="quantized-matmul kernel: auto or a backend name (default from settings)")
    p.add_argument("--device", help="cpu, cuda:0, auto-detect, or auto to split over devices")
    p.add_argument("--compile", choices=("auto", "on", "off"),
                   help="decode through a compiled step (CUDA graphs on CUDA): auto, on or off (default from settings)")
    p.add_argument("--no-autoload", action="store_true", help="start without loading a model")
    p.add_argument("--remote-engine", metavar="URL[,URL...]",
                   help="generate on these vLLM servers (engine: remote); tokenizing and prompts stay here")
    return p.parse_args(argv)


def read_auth(args: argparse.Namespace) -> list[tuple[str, str]] | None:
    """Credentials from --gradio-auth and --gradio-auth-path; a malformed entry is an error."""
    entries: list[str] = []
    if args.gradio_auth:
        entries += args.gradio_auth.split(",")
    if args.gradio_auth_path:
        text = Path(args.gradio_auth_path).read_text(encoding="utf-8")
        entries += [e for line in text.splitlines() for e in line.split(",")]
    creds = []
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user or not password:
            raise SystemExit(f"--gradio-auth entries must look like user:pass; got {entry.split(':')[0]!r}:…")
        creds.append((user, password))
    return creds or None


def host_of(args: argparse.Namespace) -> str:
    return args.listen_host or ("0.0.0.0" if args.listen else "127.0.0.1")


def startup_model(engine, args: argparse.Namespace) -> str | None:
    if args.no_autoload:
        return None
    if args.model:
        return args.model
    return DEMO_MODEL if DEMO_MODEL in engine.list_models() else None


def autoload(engine, settings, name: str | None) -> str:
    """Load the start-up model with its saved settings; returns a note for the Model tab's status line."""
    if not name:
        return ""
    values = settings.for_model(name)
    try:
        engine.load(name, kernel=values["kernel"], device=values["device"], dtype=values["dtype"],
                    compile=values["compile"])
    except Exception as exc:  # the app must still start, and say why the model is missing
        message = f"**Loading {name} at start failed**: {type(exc).__name__}: {exc}"
        print(message, file=sys.stderr)
        return message
    return ""


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import uvicorn
    from fastapi import FastAPI

    from backend.remote.select import make_engine
    from backend.settings import Settings

    auth = read_auth(args)
    settings = Settings.load(args.settings if Path(args.settings).is_file() else None, args.models_dir)
    for key in ("kernel", "device", "compile"):
        if getattr(args, key):
            settings.defaults[key] = getattr(args, key)
    if args.remote_engine:
        settings.defaults.update(engine="remote", remote_urls=args.remote_engine)
    for warning in settings.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    engine = make_engine(args.models_dir, settings.defaults)
    note = autoload(engine, settings, startup_model(engine, args))

    api_app = None
    if args.api or args.nowebui:
        from api import api_warning, create_api
        api_app = create_api(engine, settings, api_key=args.api_key, webui=not args.nowebui)
        warning = api_warning(host_of(args) not in ("127.0.0.1", "localhost", "::1") or args.share, args.api_key)
        if warning:
            print(warning, file=sys.stderr)
    if args.nowebui:
        uvicorn.run(api_app, host=host_of(args), port=args.port)
        return

    import gradio as gr

    from ui.app import CSS, build_ui, theme
    demo = build_ui(engine, settings, note)
    demo.queue(default_concurrency_limit=4)
    if args.share:
        # only launch() opens a share tunnel; the API is mounted on its server afterwards
        demo.launch(server_name=host_of(args), server_port=args.port, share=True, auth=auth, theme=theme(),
                    css=CSS, ssr_mode=False, prevent_thread_lock=True)
        if api_app is not None:
            demo.app.mount("/", api_app)
        demo.block_thread()
        return
    app = gr.mount_gradio_app(api_app or FastAPI(), demo, path="", auth=auth, theme=theme(), css=CSS,
                              ssr_mode=False)
    print(f"StarCoder WebUI on http://{host_of(args)}:{args.port}", flush=True)
    uvicorn.run(app, host=host_of(args), port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
