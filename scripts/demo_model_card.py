"""The demo model's card (models/starcoder-demo/README.md), written from the build report."""
from __future__ import annotations

from pathlib import Path

# the chain of runs that made the model of commit ca03b4f (each `train --init` with the demo model of the commit
# before; a run that continues another model must list that model's history here), and
# the first model's held-out perplexity on the same windows (demo_eval.perplexity), with the tokenizer.json it
# shipped (which split digits one by one, unlike its training) and with the tokenization it was trained with
EARLIER = [{"commit": "30c1fb5", "tokens": 2.1e6, "minutes": 22.0,
            "what": "4 x 256 at 512 positions, on the standard library only"},
           {"commit": "6a4468c", "tokens": 1.24e6, "minutes": 57.1,
            "what": "continued at 2048 positions with the package data, on a 2-core machine shared with other work"},
           {"commit": "6789a7f", "tokens": 14.1e6, "minutes": 110.0,
            "what": "continued on a quiet machine, batch 8 x 511, the last 20 % at 2 x 2047"}]
FIRST = {"n_positions": 512, "perplexity": 50.209, "perplexity_as_trained": 32.820, "no_codecs": 154.081}
# the model this run replaces, GPTQ, measured the same way: the fourth run of the chain above (commit ca03b4f);
# a run with `--init` continues it, a run without starts from scratch
PREVIOUS = {"perplexity": 7.010, "no_codecs": 28.337, "fim_parse": 0.24, "fim_ended": 0.0,
            "what": "the model this one replaces (four chained runs, 244 minutes in all)", "short": "that model"}


def _sample(name: str, r: dict) -> str:
    if name == "fim":
        return (f"FIM hole (PSM), prefix `{r['prefix']!r}`, suffix `{r['suffix']!r}`; the middle written: "
                f"`{r['output']!r}` (the filled function {'parses' if r['parses'] else 'does not parse'}).\n")
    if name == "assistant":
        return (f"Assistant turn (the app's dialogue preamble, {r['prompt_tokens']} prompt tokens), "
                f"question `{r['question']}`:\n\n```\n{r['output'].strip()}\n```\n")
    verdict = "parse" if r["parses"] else "do not parse"
    return f"Prompt `{r['prompt']!r}` (the kept lines {verdict} as Python):\n\n```\n{r['prompt']}{r['output']}\n```\n"


def write_model_card(path: Path, results: dict, args) -> None:
    c, t, ppl = results["config"], results["train"], results["perplexity"]
    data = t.get("data", {})
    packages = data.get("packages", [])
    pkg_rows = "\n".join(f"| {p['package']} | {p['version']} | {p['licence']} | {p['files']} | {p['bytes']:,} |"
                         for p in packages)
    gen = results["generation_config"]
    n_ctx = c["n_positions"]
    holes = results["fim_holes"]
    parsed = sum(bool(r.get("parses")) for r in results["prompts"].values())
    samples = "\n".join(_sample(name, r) for name, r in results["prompts"].items())
    earlier = EARLIER if t.get("init") else []
    seen = t.get("tokens", 0) + sum(run["tokens"] for run in earlier)
    minutes = t.get("train_minutes", 0) + sum(run["minutes"] for run in earlier)
    if earlier:
        chain = "; ".join(f"{run['what']}: {run['tokens'] / 1e6:.2f} M tokens in {run['minutes']:.0f} min "
                          f"(commit {run['commit']})" for run in earlier)
        runs = len(earlier) + 1
        origin = (f"trained on CPU in {runs} runs, each continuing the last ({minutes:.0f} minutes and "
                  f"{seen / 1e6:.1f} M tokens in all; this last run {t.get('train_minutes')} minutes)")
        start = (f"from the previous demo model, itself made in {runs - 1} runs ({chain}); positions 512+ were "
                 f"initialised from the first model's learned ones in turn. This run: ")
    else:
        origin, start = f"trained on CPU for {t.get('train_minutes')} minutes", ""
    pkg_ppl = (f"| GPTQ, held-out package files ({results.get('held_out_package_files')} files) | "
               f"{ppl['packages_shipped']:.3f} |\n" if "packages_shipped" in ppl else "")
    path.write_text(f"""---
license: other
license_name: psf-2.0-and-permissive-package-licences
library_name: transformers
pipeline_tag: text-generation
tags: [gpt_bigcode, gptq, code, demo]
---
# starcoder-demo (GPTQ 4-bit)

A tiny StarCoder-architecture model (GPTBigCode, multi-query attention) for trying the app offline,
{origin}. Of its greedy answers to the four code prompts below, {parsed} of 4 parse as Python;
{holes["parse_fraction"]:.0%} of its fills of {holes["holes"]} held-out holes do; what it writes rarely does what the
names promise. It shows the app working offline; it is not a coding assistant.

## What it cannot do
- Write working code beyond short idioms: it has {t.get("parameters", 0) / 1e6:.1f} M parameters and saw
  {seen / 1e6:.1f} M tokens (StarCoder: 15.5 B parameters, 1 T tokens).
- Follow instructions or hold a conversation: in the assistant mode it answers with code-like text
  more often than with prose, and what it says about code is wrong more often than not.
- Any language but Python: it saw only Python files.
- Long-range use of its {n_ctx}-token context: it trained on full-length windows only in the last
  part of the run.

## Model
- Architecture: GPTBigCode, {c["n_layer"]} layers, hidden {c["n_embd"]}, {c["n_head"]} heads (multi-query:
  one K/V head), MLP {c["n_inner"]}, {n_ctx} positions, vocabulary {c["vocab_size"]}, tied embeddings.
- Tokenizer: byte-level BPE (GPT-2 pre-tokenization) trained on the standard library's training split,
  with StarCoder's 19 special tokens at ids 0-18 (`<|endoftext|>`, `<fim_prefix>`, `<fim_middle>`,
  `<fim_suffix>`, ...).
- Training: {start}{t.get("steps")} AdamW steps on CPU ({t.get("threads")} threads, {t.get("train_minutes")} minutes,
  {t.get("tokens", 0) / 1e6:.2f} M tokens): {t.get("batch_size")} x {t.get("seqlen")} tokens per step, then from step
  {t.get("long_from_step")} {t.get("long_batch_size")} x {t.get("long_seqlen")} (full context); lr {t.get("lr")} with
  warm-up and cosine decay on wall-clock time; next-token loss with StarCoder's fill-in-the-middle
  objective (half of the document windows turned into PSM or SPM; {t.get("fim_line_share", 0):.0%} of those with a
  hole of 1-4 lines from the first line's code to the last line's end, the rest cut at two random
  characters as StarCoder's were; each FIM window is between 32 tokens and a sequence long, so the
  middle's closing `<|endoftext|>` comes at no fixed position and has to be learned from the code
  around it). Final training loss (EMA)
  {t.get("final_loss_ema")}.
- Quantization: this project's GPTQ with TheBloke's recipe: 4-bit, group size -1, act-order (desc_act),
  symmetric, damp 0.01, true-sequential, {results["calibration"]["windows"]} calibration windows of
  {results["calibration"]["seqlen"]} tokens from the standard library's training split. Files in AutoGPTQ's
  layout (`model.safetensors`, `quantize_config.json`, `config.json` with `quantization_config`);
  non-quantized tensors in fp16; `lm_head` tied to `wte`.
- Defaults (`generation_config.json`, the app's defaults for this model below a user's saved settings):
  temperature {gen["temperature"]}, top_p {gen["top_p"]}, top_k {gen["top_k"]}, repetition_penalty
  {gen["repetition_penalty"]}, max_new_tokens {gen["max_new_tokens"]}. The repetition penalty is what keeps a
  model this small from repeating one line: the build's `defaults` step tried
  {", ".join(str(c["repetition_penalty"]) for c in results.get("defaults_choice", {}).get("candidates", []))} on the five
  prompts and on {results.get("defaults_choice", {}).get("holes")} other held-out holes than those below, and kept the
  one with no line three times in a row and the most code that parses.

## Held-out perplexity
{results["eval_tokens"]} tokens from {results["held_out_files"]} held-out standard-library files (the same files
and tokens as earlier versions of this model: split by a hash of the file's path, windows of
{results["eval_seqlen"]} tokens, plain next-token):

| weights | perplexity |
|---|---|
| unquantized (fp32) | {ppl["fp32"]:.3f} |
| RTN 4-bit, group -1 | {ppl["rtn_4bit"]:.3f} |
| GPTQ 4-bit, group -1, act-order | {ppl["gptq_4bit"]:.3f} |
| GPTQ, as shipped (read back by the app's loader) | {ppl["stdlib_shipped"]:.3f} ({results["stdlib_bits_per_byte"]:.3f} bits per byte) |
| GPTQ, the same tokens in windows of {n_ctx} | {ppl[f"stdlib_shipped_{n_ctx}_context"]:.3f} |
| GPTQ, held-out files without `encodings/` ({results["eval_windows_no_codecs"]} windows of {results["eval_seqlen"]}) | {ppl["stdlib_shipped_no_codecs"]:.3f} |
{pkg_ppl}
About half of the comparison windows' text is two codec tables (`encodings/cp1026.py`,
`encodings/cp860.py`), near-copies of the codec tables in the training split, which a model learns to
reproduce almost exactly; the row without `encodings/` is the fairer measure of code.

The first demo model (4 x 256, 512 positions, stdlib only), measured the same way on the same
windows: {FIRST["perplexity"]:.3f} with the tokenizer as it shipped then (whose tokenizer.json split digits
one by one, which the model never saw in training), {FIRST["perplexity_as_trained"]:.3f} with the tokenization
it was trained with (what this model's tokenizer.json now does); {PREVIOUS["what"]}:
{PREVIOUS["perplexity"]:.3f} (GPTQ). Without `encodings/`: the first model {FIRST["no_codecs"]:.3f},
{PREVIOUS["short"]} {PREVIOUS["no_codecs"]:.3f}.

## Samples (greedy, repetition penalty {gen["repetition_penalty"]})
{samples}
Fill-in-the-middle on {holes["holes"]} one-statement holes cut from functions of held-out files: the
filled file parses in {holes["parse_fraction"]:.0%} of them; the middle equals the original statement in
{holes["exact_fraction"]:.0%}; the model ends the middle (`<|endoftext|>`) within 32 tokens in
{holes["ended_fraction"]:.0%} ({PREVIOUS["short"]}: parses {PREVIOUS["fim_parse"]:.0%}, ends
{PREVIOUS["fim_ended"]:.0%}).

## Data and licences
- The `.py` files of the CPython standard library (excluding its test suites): {data.get("stdlib_files")}
  training files, {data.get("stdlib_tokens", 0) / 1e6:.2f} M tokens; Python Software Foundation License.
- The library `.py` files (no tests, vendored or generated code; at most {args.max_package_bytes:,} bytes
  per package, sampled by a hash of the path) of these permissively licensed packages, each licence
  read from the package's own metadata: {data.get("package_files")} files, {data.get("package_tokens", 0) / 1e6:.2f} M tokens,
  {data.get("package_share", 0):.0%} of the training tokens.

| package | version | licence (metadata) | files | bytes |
|---|---|---|---|---|
{pkg_rows}

Files are deduplicated by content ({data.get("duplicates_dropped")} dropped), and no training file equals a
held-out file. The model is released under the terms of these licences (PSF and MIT/BSD/Apache-2.0:
keep their notices when redistributing). Made by `scripts/build_demo_model.py` (see
`scripts/demo-model.md` for the commands).
""", encoding="utf-8")
