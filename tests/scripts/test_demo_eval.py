"""Tests for the demo model's checks: line repetition, the code an editor keeps, FIM holes from real files."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from demo_eval import complete_code, fim_holes, longest_line_run, parses  # noqa: E402

SOURCE = '''import os


def size(path):
    total = 0
    for name in os.listdir(path):
        total += os.path.getsize(os.path.join(path, name))
    return total


class Box:
    def area(self, w, h):
        s = w * h
        t = s + 0
        return t
'''


def test_longest_line_run_counts_consecutive_repeats_only() -> None:
    assert longest_line_run("a\nb\na\nb\n") == 1
    assert longest_line_run("x = 1\n    #\n    #\n    #  \ny") == 3
    assert longest_line_run("") == 1


def test_complete_code_keeps_whole_lines_of_the_function_only() -> None:
    text = "\n    return n\n\nprint(fibonacci(3))\nx = fib"
    assert complete_code("def fibonacci(n):", text, ended=False, top_level_stops=True) == "\n    return n\n"
    assert complete_code("import os", "\nimport sys\nimport ti", ended=False, top_level_stops=False) == "\nimport sys"
    assert complete_code("import os", "\nimport sys", ended=True, top_level_stops=False) == "\nimport sys"
    assert parses("def f():\n    return 1\n") and not parses("def f(:\n")


def test_fim_holes_are_single_statements_whose_file_parses() -> None:
    holes = fim_holes([("pkg/mod.py", SOURCE)], n=10, seed=1)
    assert len(holes) == 2     # one hole per function
    for hole in holes:
        assert "\n" not in hole["middle"] and hole["middle"].strip()
        assert parses(hole["prefix"] + hole["middle"] + hole["suffix"])
        assert hole["prefix"].startswith("def ")
    assert holes == fim_holes([("pkg/mod.py", SOURCE)], n=10, seed=1)
