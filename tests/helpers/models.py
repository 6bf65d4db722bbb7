"""Model folders for the UI tests: the demo model when it is built, else a small random stand-in."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.helpers.checkpoints import tiny_config, write_checkpoint, write_tokenizer

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "models" / "starcoder-demo"
DEMO_NAME = "starcoder-demo"
SECOND_NAME = "second-model"
BROKEN_NAME = "broken-model"


def demo_available() -> bool:
    return (DEMO / "config.json").is_file() and any(DEMO.glob("*.safetensors"))


def write_stand_in(folder: Path) -> None:
    """A random 4-bit GPTBigCode with StarCoder's special tokens and room for long generations."""
    write_tokenizer(folder, vocab_size=300)
    from transformers import AutoTokenizer
    vocab = len(AutoTokenizer.from_pretrained(str(folder)))
    write_checkpoint(folder, config=tiny_config(vocab_size=vocab, n_positions=2048, n_embd=64, n_layer=2))


def populate(models_dir: Path) -> Path:
    """The demo (or its stand-in), a second copy of it under another name, and a broken folder."""
    models_dir.mkdir(parents=True, exist_ok=True)
    demo = models_dir / DEMO_NAME
    if demo_available():
        shutil.copytree(DEMO, demo)   # a copy: the engine refuses model folders that resolve outside models/
    else:
        write_stand_in(demo)
    shutil.copytree(demo, models_dir / SECOND_NAME)
    broken = models_dir / BROKEN_NAME
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "gpt_bigcode", "n_layer": "many"}))
    (broken / "quantize_config.json").write_text("{ not json")
    return models_dir
