"""Build the demo model: tokenizer, FIM training on the stdlib, GPTQ/RTN quantization, evaluation, files."""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

from backend.quant_config import QuantConfig  # noqa: E402
from quantizer.quantize import quantize_model, sample_calibration, save_quantized  # noqa: E402
from demo_data import FimSampler, eval_windows, split_corpus, train_tokenizer  # noqa: E402

DEFAULT_WORK = Path(tempfile.gettempdir()) / "starcoder-demo-build"
# no trailing newline after a colon: the BPE joins a newline with the next line's indentation, so a
# bare "\n" token at the end of a prompt announces an unindented line
PROMPTS = ["def fibonacci(n):", "import os\n", "class Stack:\n    def __init__(self):",
           "def read_lines(path):\n    with open(path) as f:"]
FIM_EXAMPLE = ("def add(a, b):\n    ", "\n\n\ndef sub(a, b):\n    return a - b\n")


def build_tokenizer(args) -> None:
    train, _ = split_corpus(args.held_out_percent)
    tok = train_tokenizer([text for _, text in train], args.vocab_size, args.work / "tokenizer", args.n_positions)
    print(f"tokenizer: {len(tok)} tokens from {len(train)} training files -> {args.work / 'tokenizer'}")


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # whole files exceed model_max_length on purpose
    return AutoTokenizer.from_pretrained(path)


def _new_model(args, tok):
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    config = GPTBigCodeConfig(vocab_size=len(tok), n_positions=args.n_positions, n_embd=args.n_embd,
                              n_layer=args.n_layer, n_head=args.n_head, n_inner=4 * args.n_embd,
                              activation_function="gelu_pytorch_tanh", multi_query=True,
                              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return GPTBigCodeForCausalLM(config)


def train(args) -> None:
    torch.manual_seed(args.seed)
    tok = _load_tokenizer(args.work / "tokenizer")
    train_files, _ = split_corpus(args.held_out_percent)
    docs = [tok.encode(text) for _, text in train_files]
    sampler = FimSampler(tok, docs, args.seqlen, seed=args.seed)
    model = _new_model(args, tok)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters, {sum(map(len, docs)) / 1e6:.2f}M training tokens", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    # --steps gives a step-based schedule (bit-reproducible); otherwise the schedule runs on wall-clock
    # time and training stops when --minutes is spent, so the step count depends on the machine's speed
    budget = args.minutes * 60
    start, step, log, ema = time.time(), 0, [], None
    while step < args.steps if args.steps else time.time() - start < budget:
        progress = step / args.steps if args.steps else (time.time() - start) / budget
        lr = _lr(step, progress, args.lr, args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = torch.tensor([sampler.sequence() for _ in range(args.batch_size)])
        loss = model(input_ids=batch, labels=batch).loss  # labels are shifted inside the model
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        step += 1
        if step % 25 == 0:
            log.append({"step": step, "loss": round(ema, 4), "minutes": round((time.time() - start) / 60, 2)})
            print(f"step {step} loss {loss.item():.3f} (ema {ema:.3f}) lr {lr:.2e} "
                  f"{(time.time() - start) / 60:.1f} min", flush=True)
    model.save_pretrained(args.work / "fp32")
    tok.save_pretrained(args.work / "fp32")
    info = {"steps": step, "batch_size": args.batch_size, "seqlen": args.seqlen, "final_loss_ema": round(ema, 4),
            "train_minutes": round((time.time() - start) / 60, 1), "parameters": n_params, "loss_log": log}
    (args.work / "train.json").write_text(json.dumps(info, indent=2))


def _lr(step: int, progress: float, peak: float, warmup: int) -> float:
    # linear warm-up, then cosine decay to a tenth of the peak over the run's progress (0..1)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, progress)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


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


def _as_checkpoint(model) -> None:
    # a reader gets the non-quantized tensors in fp16; evaluate the quantized models with those values
    quantized = {f"{n}.weight" for n, m in model.named_modules() if n.endswith(("c_attn", "c_proj", "c_fc"))}
    for name, p in model.named_parameters():
        if name not in quantized:
            p.data = p.data.half().float()


@torch.no_grad()
def complete(model, tok, prompt: str, max_new_tokens: int = 48) -> str:
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=False)


def quantize(args) -> None:
    from transformers import GPTBigCodeForCausalLM

    torch.manual_seed(args.seed)
    tok = _load_tokenizer(args.work / "fp32")
    model = GPTBigCodeForCausalLM.from_pretrained(args.work / "fp32", dtype=torch.float32).eval()
    train_files, held_out = split_corpus(args.held_out_percent)
    windows = eval_windows(tok, [t for _, t in held_out], model.config.n_positions, args.eval_windows)
    stream = []
    for _, text in train_files:
        stream += tok.encode(text) + [tok.eos_token_id]
    calib = sample_calibration(torch.tensor(stream), args.nsamples, model.config.n_positions, args.seed)
    cfg = QuantConfig(bits=4, group_size=-1, desc_act=True, sym=True, model_file_base_name="model")
    results = {"eval_tokens": sum(map(len, windows)), "held_out_files": len(held_out),
               "perplexity": {"fp32": perplexity(model, windows)}}
    quantized = {}
    for method in ("rtn", "gptq"):
        qmodel = copy.deepcopy(model)
        t0 = time.time()
        layers = quantize_model(qmodel, calib, cfg, method, damp_percent=args.damp_percent)
        results[f"{method}_seconds"] = round(time.time() - t0, 1)
        _as_checkpoint(qmodel)
        results["perplexity"][f"{method}_4bit"] = perplexity(qmodel, windows)
        quantized[method] = (qmodel, layers)
        print(f"{method}: perplexity {results['perplexity'][f'{method}_4bit']:.3f}", flush=True)
    print(f"fp32: perplexity {results['perplexity']['fp32']:.3f}")
    qmodel, layers = quantized["gptq"]
    out = save_quantized(args.out, qmodel, layers, cfg, damp_percent=args.damp_percent,
                         model_name_or_path=None, tokenizer=args.work / "tokenizer")
    results["samples"] = {p: complete(qmodel, tok, p) for p in PROMPTS}
    fim = f"<fim_prefix>{FIM_EXAMPLE[0]}<fim_suffix>{FIM_EXAMPLE[1]}<fim_middle>"
    results["samples"][fim] = complete(qmodel, tok, fim, 24)
    train_info = json.loads((args.work / "train.json").read_text()) if (args.work / "train.json").is_file() else {}
    results["train"] = {k: v for k, v in train_info.items() if k != "loss_log"}
    results["config"] = {k: getattr(model.config, k) for k in ("vocab_size", "n_positions", "n_embd", "n_layer",
                                                                 "n_head", "n_inner", "multi_query")}
    write_model_card(out / "README.md", results, args)
    results["files"] = {f.name: f.stat().st_size for f in sorted(out.iterdir())}
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(results, indent=2) + "\n")
    for prompt, text in results["samples"].items():
        print(f"--- {prompt!r}\n{text}")
    print(json.dumps({k: v for k, v in results.items() if k != "samples"}, indent=2))


def write_model_card(path: Path, results: dict, args) -> None:
    c, t, ppl = results["config"], results["train"], results["perplexity"]
    samples = "\n".join(f"Prompt `{p!r}`:\n\n```\n{p}{s}\n```\n" for p, s in list(results["samples"].items())[:2])
    path.write_text(f"""---
license: psf-2.0
library_name: transformers
pipeline_tag: text-generation
tags: [gpt_bigcode, gptq, code, demo]
---
# starcoder-demo (GPTQ 4-bit)

A tiny StarCoder-architecture model (GPTBigCode, multi-query attention) for trying the app offline.
It is a toy trained for about twenty CPU minutes: its completions have Python's shape (indentation,
`self.`, `if`, comments) but are not working code.

- Architecture: GPTBigCode, {c["n_layer"]} layers, hidden {c["n_embd"]}, {c["n_head"]} heads (multi-query:
  one K/V head), MLP {c["n_inner"]}, {c["n_positions"]} positions, vocabulary {c["vocab_size"]}, tied embeddings.
- Tokenizer: byte-level BPE trained on the same corpus, with StarCoder's 19 special tokens at ids 0-18
  (`<|endoftext|>`, `<fim_prefix>`, `<fim_middle>`, `<fim_suffix>`, ...).
- Training: {t.get("steps")} steps of {t.get("batch_size")} x {t.get("seqlen")} tokens on CPU
  ({t.get("train_minutes")} minutes), next-token loss with StarCoder's fill-in-the-middle objective (half of
  the document windows turned into PSM or SPM). Final training loss (EMA) {t.get("final_loss_ema")}.
- Quantization: this project's GPTQ with TheBloke's recipe: 4-bit, group size -1, act-order (desc_act),
  symmetric, damp 0.01, true-sequential, {args.nsamples} calibration windows of {c["n_positions"]} tokens from
  the training split. Files in AutoGPTQ's layout (`model.safetensors`, `quantize_config.json`,
  `config.json` with `quantization_config`); non-quantized tensors in fp16; `lm_head` tied to `wte`.

## Held-out perplexity
{results["eval_tokens"]} tokens from {results["held_out_files"]} held-out standard-library files (split by file):

| weights | perplexity |
|---|---|
| unquantized (fp32) | {ppl["fp32"]:.3f} |
| RTN 4-bit, group -1 | {ppl["rtn_4bit"]:.3f} |
| GPTQ 4-bit, group -1, act-order | {ppl["gptq_4bit"]:.3f} |

## Samples (greedy)
{samples}
## Data and licence
Trained only on the `.py` files of the CPython standard library (excluding its test suites), which is
distributed under the Python Software Foundation License; this model is released under the same terms.
Made by `scripts/build_demo_model.py` (see `scripts/demo-model.md` for the commands).
""", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("step", choices=("tokenizer", "train", "quantize", "all"))
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="unquantized weights and tokenizer (outside the repo)")
    parser.add_argument("--out", type=Path, default=REPO / "models" / "starcoder-demo")
    parser.add_argument("--report", type=Path, default=REPO / "scripts" / "demo-model.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--held-out-percent", type=int, default=5)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--n-positions", type=int, default=512)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=511, help="training sequence length (+1 target token = n_positions)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=22.0, help="wall-clock training budget")
    parser.add_argument("--steps", type=int, default=None, help="exact step count (overrides --minutes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nsamples", type=int, default=128, help="GPTQ calibration windows")
    parser.add_argument("--damp-percent", type=float, default=0.01)
    parser.add_argument("--eval-windows", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    for name, fn in (("tokenizer", build_tokenizer), ("train", train), ("quantize", quantize)):
        if args.step in (name, "all"):
            fn(args)


if __name__ == "__main__":
    main()
