"""The shipped demo model's promises: full context, small folder, the assistant preamble fits, its own defaults."""
from __future__ import annotations

import json

from backend.prompts import render_dialogue

MAX_FOLDER_BYTES = 25 * 1024 * 1024


def test_demo_model_has_a_2048_token_context(demo_dir) -> None:
    config = json.loads((demo_dir / "config.json").read_text())
    tokenizer_config = json.loads((demo_dir / "tokenizer_config.json").read_text())
    assert config["n_positions"] >= 2048
    assert tokenizer_config["model_max_length"] == config["n_positions"]
    assert config["model_type"] == "gpt_bigcode" and config["multi_query"] is True


def test_demo_model_folder_stays_small(demo_dir) -> None:
    size = sum(f.stat().st_size for f in demo_dir.rglob("*") if f.is_file())
    assert size < MAX_FOLDER_BYTES, f"{demo_dir} holds {size:,} bytes"


def test_assistant_preamble_leaves_room_to_answer(demo_dir) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(demo_dir))
    n_positions = json.loads((demo_dir / "config.json").read_text())["n_positions"]
    prompt = render_dialogue([{"role": "user", "content": "How do I check whether a file exists in Python?"}])
    defaults = json.loads((demo_dir / "generation_config.json").read_text())
    assert len(tok(prompt).input_ids) + defaults["max_new_tokens"] <= n_positions


def test_demo_model_ships_defaults_for_a_tiny_model(demo_dir) -> None:
    defaults = json.loads((demo_dir / "generation_config.json").read_text())
    assert defaults["repetition_penalty"] > 1.0
    assert 0 < defaults["temperature"] <= 0.5
    assert {"top_p", "top_k", "max_new_tokens", "do_sample", "no_repeat_ngram_size"} <= defaults.keys()


def test_demo_tokenizer_cuts_text_as_in_training(demo_dir, tmp_path) -> None:
    import shutil

    from transformers import AutoTokenizer

    # training loaded the tokenizer from a folder without config.json; the app loads the model folder
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        shutil.copy(demo_dir / name, tmp_path / name)
    shipped, as_trained = AutoTokenizer.from_pretrained(str(demo_dir)), AutoTokenizer.from_pretrained(str(tmp_path))
    text = "def f(x):\n    return x * 1234 + 0x1F\n"
    assert shipped(text).input_ids == as_trained(text).input_ids
    assert shipped.convert_ids_to_tokens(list(range(3))) == ["<|endoftext|>", "<fim_prefix>", "<fim_middle>"]


def test_the_shipped_model_writes_code_and_prose_without_looping(demo_dir) -> None:
    # a new user's first minute, on the folder that ships, read by the app's loader: five fixed prompts, greedy
    # with the model's own repetition settings; no line three times in a row
    import sys
    from pathlib import Path

    from backend.loader import load_dequantized, load_tokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from demo_eval import fixed_prompts

    defaults = json.loads((demo_dir / "generation_config.json").read_text())
    results = fixed_prompts(load_dequantized(demo_dir).float().eval(), load_tokenizer(demo_dir), defaults)
    assert {name: r["longest_line_run"] for name, r in results.items()} == {name: min(2, r["longest_line_run"])
                                                                           for name, r in results.items()}, results
    # which answers parse is what the build measured and the model card reports (one of four code prompts today)
    report = json.loads((Path(__file__).resolve().parents[2] / "scripts" / "demo-model.json").read_text())
    assert {name: r.get("parses") for name, r in results.items()} == \
        {name: r.get("parses") for name, r in report["prompts"].items()}, results
    assert any(r.get("parses") for r in results.values()), results
    assert results["assistant"]["output"].strip(), results["assistant"]
