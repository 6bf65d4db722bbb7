"""Tests for the demo model's data pipeline: special-token ids, the file split, licences, dedup, FIM samples."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import demo_data  # noqa: E402
from demo_data import (SPECIAL_TOKENS, FimSampler, eval_windows, is_held_out, package_licence,  # noqa: E402
                       train_tokenizer)

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


def test_a_fim_piece_from_a_long_file_fits_one_sequence_with_its_end(tokenizer) -> None:
    # documents far longer than a sequence: a FIM piece cut at the sequence's end would lose the
    # middle's last tokens and <|endoftext|>, and the model would never learn to end a middle
    docs = [tokenizer.encode("".join(TEXTS) * 8)]
    sampler = FimSampler(tokenizer, docs, seqlen=64, fim_rate=1.0, seed=1)
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    middle = tokenizer.convert_tokens_to_ids("<fim_middle>")
    for _ in range(40):
        sequence = sampler.sequence()
        assert eot in sequence and sequence.index(eot) > sequence.index(middle)


def test_fim_pieces_end_at_many_positions(tokenizer) -> None:
    # with every FIM window as long as a sequence the middle's <|endoftext|> came at one position, and the
    # model learned to end a middle by position rather than by what it had written
    docs = [tokenizer.encode("".join(TEXTS) * 8)]
    sampler = FimSampler(tokenizer, docs, seqlen=256, fim_rate=1.0, seed=4)
    lengths = [len(sampler._piece()) for _ in range(60)]
    assert min(lengths) < 128 < max(lengths) and len(set(lengths)) > 20


def test_line_holes_span_one_to_four_lines_from_the_indentation(tokenizer) -> None:
    docs = [tokenizer.encode(TEXTS[2] * 4)]
    sampler = FimSampler(tokenizer, docs, seqlen=64, fim_rate=1.0, spm_rate=0.0, seed=2, line_rate=1.0)
    middle = tokenizer.convert_tokens_to_ids("<fim_middle>")
    suffix = tokenizer.convert_tokens_to_ids("<fim_suffix>")
    for _ in range(20):
        piece = sampler._piece()
        pre = tokenizer.decode(piece[1:piece.index(suffix)])
        suf = tokenizer.decode(piece[piece.index(suffix) + 1:piece.index(middle)])
        mid = tokenizer.decode(piece[piece.index(middle) + 1:-1])
        assert mid.count("\n") <= 3 and mid == mid.strip()    # 1-4 lines, no indentation or newline at its ends
        assert pre.split("\n")[-1].strip() == ""             # the hole starts where a line's code starts
        assert suf == "" or suf.startswith("\n")              # and ends where its last line ends


def test_eval_windows_are_full_length(tokenizer) -> None:
    windows = eval_windows(tokenizer, TEXTS, seqlen=16, max_windows=5)
    assert len(windows) == 5 and all(len(w) == 16 for w in windows)


def _fake_site(root: Path, licence_lines: str) -> Path:
    site = root / "site"
    (site / "demo_pkg-1.0.dist-info").mkdir(parents=True)
    (site / "demo_pkg-1.0.dist-info" / "METADATA").write_text(
        f"Metadata-Version: 2.4\nName: demo_pkg\nVersion: 1.0\n{licence_lines}\n\nA package.\n")
    return site


def test_a_package_is_taken_only_under_the_licence_its_metadata_states(tmp_path) -> None:
    site = _fake_site(tmp_path, "License-Expression: MIT\nClassifier: Programming Language :: Python")
    assert package_licence(site, "demo_pkg", "MIT") == ("1.0", "MIT")
    with pytest.raises(ValueError, match="not Apache-2.0"):
        package_licence(site, "demo_pkg", "Apache-2.0")
    gpl = _fake_site(tmp_path / "gpl", "Classifier: License :: OSI Approved :: GNU General Public License v3 (GPLv3)")
    with pytest.raises(ValueError, match="drop it from PACKAGES"):
        package_licence(gpl, "demo_pkg", "BSD-3-Clause")


def test_package_files_skip_tests_vendored_and_generated_code(tmp_path, monkeypatch) -> None:
    site = _fake_site(tmp_path, "License-Expression: BSD-3-Clause")
    pkg = site / "demo_pkg"
    for rel, text in {"core.py": "def f():\n    return 1\n", "tests/test_core.py": "def test_f():\n    pass\n",
                      "_vendor/six.py": "x = 1\n", "gen.py": "# Auto-generated file, do not edit\nx = 1\n",
                      "blob.py": "x = '" + "a" * 2000 + "'\n", "sub/util.py": "import os\n"}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    monkeypatch.setattr(demo_data, "PACKAGES", [("demo_pkg", "demo_pkg", "BSD-3-Clause")])
    files, rows = demo_data.package_files(site)
    assert [name for name, _ in files] == ["demo_pkg/core.py", "demo_pkg/sub/util.py"]
    assert rows == [{"package": "demo_pkg", "version": "1.0", "licence": "BSD-3-Clause", "files": 2,
                     "bytes": sum(len(t) for _, t in files)}]


def test_training_files_are_unique_and_never_equal_a_held_out_file(monkeypatch) -> None:
    held = [n for n in (f"m{i}.py" for i in range(200)) if is_held_out(n)][:2]
    train = [n for n in (f"m{i}.py" for i in range(200)) if not is_held_out(n)][:3]
    std = [(held[0], "A = 1\n"), (held[1], "B = 2\n"), (train[0], "A = 1\n"), (train[1], "C = 3\n"),
           (train[2], "C = 3\n")]
    monkeypatch.setattr(demo_data, "stdlib_files", lambda: std)
    corpus = demo_data.build_corpus(None)
    assert corpus["held_out"] == std[:2]
    assert corpus["stdlib"] == [(train[1], "C = 3\n")] and corpus["duplicates_dropped"] == 2


def test_fim_sampler_follows_document_weights(tokenizer) -> None:
    docs = [tokenizer.encode(t) for t in TEXTS[:2]]
    sampler = FimSampler(tokenizer, docs, seqlen=64, fim_rate=0.0, seed=0, weights=[1.0, 0.0])
    assert all(sampler._piece()[:len(docs[0])] == docs[0] for _ in range(20))
