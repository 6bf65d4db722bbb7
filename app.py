"""Command line entry point: parse options, build the Engine and the UI, mount the API, serve."""
from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEMO_MODEL = "starcoder-demo"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="StarCoder WebUI: a browser UI and an editor API for GPTQ "
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
    p.add_argument("--api", action="store_true",
                   help="serve the HTTP API as well (OpenAI, llama.cpp, TGI, Ollama and Tabby routes)")
    p.add_argument("--api-key", help="require this key on every route: API clients send 'Authorization: Bearer "
                                     "KEY', the web UI asks for it as its login password (any user name). Visible "
                                     "in the process list: prefer --api-key-file or $STARCODER_API_KEY")
    p.add_argument("--api-key-file", help="read the key from the first line of this file")
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="allow --listen/--share with neither a key nor a login (anyone on the network gets full "
                        "control)")
    p.add_argument("--allowed-hosts", default="",
                   help="extra Host names the server answers to, comma separated ('*' for any); the listen "
                        "address, localhost and (with --listen) this machine's names are always allowed")
    p.add_argument("--cors-origins", default="",
                   help="web origins allowed to call the server from a browser, comma separated, e.g. "
                        "http://localhost:5173 (default: none)")
    p.add_argument("--max-body-mb", type=float, default=4.0, help="largest request body accepted (413 beyond)")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a request body may pause before the request ends (408)")
    p.add_argument("--max-queue", type=int, default=32,
                   help="API requests generating or waiting at once; more get 503 with Retry-After")
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


def allowed_hosts(args: argparse.Namespace) -> tuple[str, ...]:
    """Host headers to answer: loopback, the listen address, this machine's names and addresses when it listens
    on all interfaces, and what --allowed-hosts adds (DNS rebinding sends a foreign name: refused)."""
    host = host_of(args)
    names = {"127.0.0.1", "localhost", "::1", host}
    if host in ("0.0.0.0", "::"):
        names |= {socket.gethostname(), socket.getfqdn()}
        with contextlib.suppress(OSError):
            names |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    if args.share:
        names.add("*")                  # the share tunnel's name is not known beforehand; a login is required
    names |= {h.strip() for h in args.allowed_hosts.split(",") if h.strip()}
    return tuple(sorted(n.lower() for n in names))


def policy_of(args: argparse.Namespace, auth: list[tuple[str, str]] | None):
    """The one switch: a key or a login locks every route, API and web UI alike."""
    from api import Credentials, Policy
    from api.auth import read_api_key, refusal
    credentials = Credentials(read_api_key(args.api_key, args.api_key_file), tuple(auth or ()))
    problem = refusal(host_of(args), args.share, credentials, args.insecure_no_auth)
    if problem:
        raise SystemExit(problem)
    return Policy(credentials, allowed_hosts(args), tuple(o.strip() for o in args.cors_origins.split(",") if o.strip()),
                  int(args.max_body_mb * 2**20), args.body_timeout, args.max_queue)


def serve(app, args: argparse.Namespace, engine) -> None:
    """uvicorn, with a shutdown that cancels generations and gives streams a few seconds, not forever."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            engine.cancel_all()
            super().handle_exit(sig, frame)
    Server(uvicorn.Config(app, host=host_of(args), port=args.port, log_level="warning",
                          timeout_graceful_shutdown=3)).run()


def session_user(ui):
    """Who is logged in to Gradio app `ui`, from a request's cookies (its session tokens), else None."""
    def user(cookies):
        for name in (f"access-token-{ui.cookie_id}", f"access-token-unsecure-{ui.cookie_id}"):
            if cookies.get(name) in ui.tokens:
                return ui.tokens[cookies[name]]
        return None
    return user


def ui_sessions(app) -> None:
    """Let the guard accept a web UI login (Gradio's session cookie) on every route, the API's included."""
    from starlette.routing import Mount
    for route in app.routes:
        ui = getattr(route, "app", None)
        if isinstance(route, Mount) and hasattr(ui, "tokens") and hasattr(ui, "cookie_id"):
            app.state.ui_user = session_user(ui)


def share_app_kwargs(policy) -> dict:
    """For launch(): Gradio builds its own app there, so the guard goes in as that app's middleware."""
    from starlette.middleware import Middleware

    from api.guard import Guard
    return {"middleware": [Middleware(Guard, policy=policy)]}


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
    from backend.remote.select import make_engine
    from backend.settings import Settings

    auth = read_auth(args)
    policy = policy_of(args, auth)
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

    from api import api_warning, create_api
    api_app = create_api(engine, settings, policy=policy, routers=args.api or args.nowebui, webui=not args.nowebui)
    exposed = host_of(args) not in ("127.0.0.1", "localhost", "::1") or args.share
    warning = api_warning(exposed, "set" if policy.credentials.locked else None)   # only after --insecure-no-auth
    if warning:
        print(warning, file=sys.stderr)
    if args.nowebui:
        serve(api_app, args, engine)
        return

    import gradio as gr

    from ui.app import CSS, build_ui, theme
    demo = build_ui(engine, settings, note)
    demo.queue(default_concurrency_limit=4)
    # a key alone also locks the web UI: its login then takes the key as password
    ui_auth = policy.credentials.check_login if policy.credentials.locked else None
    if args.share:
        # only launch() opens a share tunnel; the API is mounted on its server afterwards
        demo.launch(server_name=host_of(args), server_port=args.port, share=True, auth=ui_auth, theme=theme(),
                    css=CSS, ssr_mode=False, prevent_thread_lock=True, app_kwargs=share_app_kwargs(policy))
        demo.app.state.ui_user = session_user(demo.app)
        demo.app.mount("/", api_app)
        demo.block_thread()
        return
    app = gr.mount_gradio_app(api_app, demo, path="", auth=ui_auth, theme=theme(), css=CSS, ssr_mode=False)
    ui_sessions(app)
    print(f"StarCoder WebUI on http://{host_of(args)}:{args.port}", flush=True)
    serve(app, args, engine)


if __name__ == "__main__":
    main()
