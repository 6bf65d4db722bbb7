"""Headless Chromium as this machine runs it, and a free local port."""
from __future__ import annotations

import socket

CHROMIUM = "/usr/bin/chromium"
# the background-networking flags keep Chromium from reaching for the network this machine does not have
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
