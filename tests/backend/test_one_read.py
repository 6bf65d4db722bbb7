"""One model choice reads the folder's config files once: selecting, showing and loading share one Checkpoint."""
from __future__ import annotations

import shutil
import sys
import threading

import pytest

from backend.engine import Engine
from backend.settings import Settings
from tests.helpers.models import DEMO, demo_available
from ui.model_tab import ModelHandlers

CONFIGS = ("config.json", "quantize_config.json", "generation_config.json")
_opened: list[str] | None = None
_lock = threading.Lock()


def _audit(event: str, args: tuple) -> None:
    # every open() of a file, from Python or from a library, passes through the "open" audit event
    if event == "open" and _opened is not None and isinstance(args[0], str):
        with _lock:
            _opened.append(args[0])


sys.addaudithook(_audit)


@pytest.mark.skipif(not demo_available(), reason="the shipped demo model is missing from models/")
def test_an_autoload_click_reads_each_config_once(tmp_path):
    global _opened
    models = tmp_path / "models"
    shutil.copytree(DEMO, models / "demo")
    engine, settings = Engine(models), Settings.load(None, models)
    handlers = ModelHandlers(engine, settings)
    _opened = []
    try:
        shown = handlers.select("demo", autoload=True)                   # the dropdown's input event
        loaded = list(handlers.load_if_autoload("demo", True, shown["kernel"], "cpu", shown["dtype"]))
    finally:
        opened, _opened = _opened, None
    assert "Loaded" in loaded[-1]["status"]
    folder = str(models / "demo")
    reads = {name: sum(1 for p in opened if p.startswith(folder) and p.endswith("/" + name)) for name in CONFIGS}
    assert reads == {name: 1 for name in CONFIGS}, reads


@pytest.mark.skipif(not demo_available(), reason="the shipped demo model is missing from models/")
def test_a_changed_folder_is_read_again(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(DEMO, models / "demo")
    engine = Engine(models)
    first = engine.inspect("demo")
    assert engine.inspect("demo") is first
    (models / "demo" / "generation_config.json").write_text('{"repetition_penalty": 1.3}')
    again = engine.inspect("demo")
    assert again is not first and again.defaults == {"repetition_penalty": 1.3}
