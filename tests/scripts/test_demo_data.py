"""Tests for the demo model's data pipeline: special-token ids, the file split, FIM sample layout."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from demo_data import SPECIAL_TOKENS, FimSampler, eval_windows, is_held_out, train_tokenizer  # noqa: E402

TEXTS = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.getcwd())\n",
         "class Stack:\n    def __init__(self):\n        self.items = []\n"] * 20


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(TEXTS, 400, out, 128)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(out)


def test_special_tokens_at_starcoder_ids(tokenizer) -> None:
    assert tokenizer.convert_ids_to_tokens(list(range(19))) == SPECIAL_TOKENS
    assert tokenizer.eos_token == tokenizer.bos_token == "<|endoftext|>"
    text = "def f(x):\n    return x * 12\n"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_split_is_by_file_and_stable() -> None:
    names = [f"pkg/mod{i}.py" for i in range(400)]
    held = [n for n in names if is_held_out(n)]
    assert 0 < len(held) < 60 and held == [n for n in names if is_held_out(n)]


def test_fim_sequences(tokenizer) -> None:
    docs = [tokenizer.encode(t) for t in TEXTS[:3]]
    sampler = FimSampler(tokenizer, docs, seqlen=64, fim_rate=1.0, seed=0)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS[:4]}
    kinds = set()
    for _ in range(40):
        piece = sampler._piece()
        assert piece[0] == ids["<fim_prefix>"] and piece[-1] == ids["<|endoftext|>"]
        assert piece.count(ids["<fim_middle>"]) == 1 and piece.count(ids["<fim_suffix>"]) == 1
        kinds.add("spm" if piece[1] == ids["<fim_suffix>"] else "psm")
        assert len(sampler.sequence()) == 65
    assert kinds == {"psm", "spm"}


def test_eval_windows_are_full_length(tokenizer) -> None:
    windows = eval_windows(tokenizer, TEXTS, seqlen=16, max_windows=5)
    assert len(windows) == 5 and all(len(w) == 16 for w in windows)
