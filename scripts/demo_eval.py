"""The demo model's checks: perplexity, five fixed prompts (greedy, the model's repetition penalty), FIM holes."""
from __future__ import annotations

import ast
import math
import random
import textwrap

import torch

from backend.prompts import DIALOGUE_STOPS, render_dialogue

# no trailing newline after a colon: the BPE joins a newline with the next line's indentation, so a
# bare "\n" token at the end of a prompt announces an unindented line
PROMPTS = {
    "function": 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""',
    "class": "class Stack:",
    "imports": "import os\nimport sys",
    "fim": ("def mean(values):\n    total = 0\n    for value in values:\n        ",
            "\n    return total / len(values)\n"),
    "assistant": "How do I check whether a file exists in Python?",
}


@torch.no_grad()
def perplexity(model, windows: list[list[int]], batch_size: int = 8) -> float:
    model.eval()
    nll, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        ids = torch.tensor(windows[i:i + batch_size])
        loss = model(input_ids=ids, labels=ids).loss
        n = ids.numel() - ids.shape[0]
        nll, count = nll + loss.item() * n, count + n
    return math.exp(nll / count)


def fim_prompt(prefix: str, suffix: str) -> str:
    return f"<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>"


@torch.no_grad()
def greedy(model, tok, prompt: str, gen: dict, max_new_tokens: int) -> tuple[str, bool]:
    """(continuation, whether it ended with <|endoftext|>), with the model's own repetition settings."""
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.eos_token_id,
                         eos_token_id=tok.eos_token_id, repetition_penalty=gen.get("repetition_penalty", 1.0),
                         no_repeat_ngram_size=gen.get("no_repeat_ngram_size", 0))
    new = out[0, ids.shape[1]:].tolist()
    ended = tok.eos_token_id in new
    if ended:
        new = new[:new.index(tok.eos_token_id)]
    return tok.decode(new, skip_special_tokens=True), ended


def longest_line_run(text: str) -> int:
    """How many times in a row the most repeated line occurs (trailing spaces ignored)."""
    best, run, prev = 0, 0, None
    for line in text.rstrip("\n").split("\n"):
        line = line.rstrip()
        run = run + 1 if line == prev else 1
        best, prev = max(best, run), line
    return best


def complete_code(prompt: str, text: str, ended: bool, top_level_stops: bool) -> str:
    """The generated code an editor would keep: complete lines only (unless generation ended by itself),
    and for a def/class prompt everything before the next unindented line."""
    if not ended and "\n" in text:
        text = text[:text.rindex("\n")]
    if top_level_stops:
        lines = text.split("\n")
        for i, line in enumerate(lines[1:], 1):
            if line and not line[0].isspace():
                text = "\n".join(lines[:i])
                break
    return text


def parses(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return True


def fixed_prompts(model, tok, gen: dict, max_new_tokens: int = 96) -> dict:
    out = {}
    for name in ("function", "class", "imports"):
        prompt = PROMPTS[name]
        text, ended = greedy(model, tok, prompt, gen, max_new_tokens)
        code = complete_code(prompt, text, ended, top_level_stops=name != "imports")
        out[name] = {"prompt": prompt, "output": text, "kept": code, "longest_line_run": longest_line_run(text),
                     "parses": parses(prompt + code)}
    prefix, suffix = PROMPTS["fim"]
    middle, ended = greedy(model, tok, fim_prompt(prefix, suffix), gen, 32)
    out["fim"] = {"prefix": prefix, "suffix": suffix, "output": middle, "ended": ended,
                  "longest_line_run": longest_line_run(middle), "parses": parses(prefix + middle + suffix)}
    prompt = render_dialogue([{"role": "user", "content": PROMPTS["assistant"]}])
    text, _ = greedy(model, tok, prompt, gen, max_new_tokens)
    for stop in DIALOGUE_STOPS:
        text = text.split(stop)[0]
    out["assistant"] = {"question": PROMPTS["assistant"], "prompt_tokens": len(tok(prompt).input_ids),
                        "output": text, "longest_line_run": longest_line_run(text)}
    return out


def fim_holes(files: list[tuple[str, str]], n: int = 50, seed: int = 0, max_chars: int = 1500) -> list[dict]:
    """One-statement holes in the bodies of short functions of the given (held-out) files."""
    candidates = []
    for name, text in files:
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        lines = text.split("\n")
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.decorator_list:
                continue
            source = textwrap.dedent("\n".join(lines[node.lineno - 1:node.end_lineno])) + "\n"
            if len(source) > max_chars or node.end_lineno - node.lineno < 3:
                continue
            candidates.append((name, node.lineno, source))
    rng = random.Random(seed)
    holes = []
    for name, lineno, source in rng.sample(candidates, len(candidates)):
        func = ast.parse(source).body[0]
        stmts = [s for s in ast.walk(func) if isinstance(s, ast.stmt) and s is not func
                 and s.lineno == s.end_lineno and not isinstance(s, ast.Expr)]
        if not stmts:
            continue
        stmt = rng.choice(stmts)
        lines = source.split("\n")
        start = sum(len(line) + 1 for line in lines[:stmt.lineno - 1]) + stmt.col_offset
        end = sum(len(line) + 1 for line in lines[:stmt.lineno - 1]) + stmt.end_col_offset
        hole = {"file": name, "line": lineno + stmt.lineno - 1, "prefix": source[:start],
                "middle": source[start:end], "suffix": source[end:]}
        if parses(hole["prefix"] + hole["middle"] + hole["suffix"]):
            holes.append(hole)
        if len(holes) == n:
            break
    return holes


def fill_holes(model, tok, gen: dict, holes: list[dict], max_new_tokens: int = 32) -> dict:
    results = []
    for hole in holes:
        middle, ended = greedy(model, tok, fim_prompt(hole["prefix"], hole["suffix"]), gen, max_new_tokens)
        results.append({"file": hole["file"], "line": hole["line"], "expected": hole["middle"], "middle": middle,
                        "ended": ended, "parses": parses(hole["prefix"] + middle + hole["suffix"]),
                        "exact": middle.strip() == hole["middle"].strip()})
    n = max(1, len(results))
    return {"holes": len(results), "parse_fraction": sum(r["parses"] for r in results) / n,
            "exact_fraction": sum(r["exact"] for r in results) / n,
            "ended_fraction": sum(r["ended"] for r in results) / n, "results": results}
