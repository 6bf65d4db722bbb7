"""Build the demo model: tokenizer, FIM training on the stdlib, GPTQ/RTN quantization, evaluation, files."""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import sysconfig
import tempfile
import time
from array import array
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

from backend.quant_config import QuantConfig  # noqa: E402
from quantizer.quantize import quantize_model, sample_calibration, save_quantized  # noqa: E402
from demo_data import FimSampler, build_corpus, eval_windows, split_corpus, train_tokenizer  # noqa: E402
from demo_eval import fill_holes, fim_holes, fixed_prompts, perplexity  # noqa: E402
from demo_model_card import write_model_card  # noqa: E402

DEFAULT_WORK = Path(tempfile.gettempdir()) / "starcoder-demo-build"
# the model's own generation defaults (generation_config.json), below a user's saved settings: near-greedy
# sampling, and a repetition penalty that keeps a tiny model out of loops of one line
GENERATION_DEFAULTS = {"do_sample": True, "temperature": 0.2, "top_p": 0.95, "top_k": 40,
                       "repetition_penalty": 1.2, "no_repeat_ngram_size": 0, "max_new_tokens": 128}


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


def _init_from(model, folder: Path) -> None:
    """Start from an earlier demo model: its unquantized weights (a `train` output) or its GPTQ weights,
    dequantized. Positions it lacks take its learned ones in turn, so a longer context starts from
    something better than noise."""
    from transformers import GPTBigCodeForCausalLM

    from backend.loader import load_dequantized

    if (folder / "quantize_config.json").is_file():
        state = load_dequantized(folder).state_dict()
    else:
        state = GPTBigCodeForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).state_dict()
    wpe = state["transformer.wpe.weight"]
    state["transformer.wpe.weight"] = wpe[torch.arange(model.config.n_positions) % wpe.shape[0]].clone()
    model.load_state_dict(state)


def _site(args) -> Path | None:
    return None if args.package_share <= 0 else args.site_packages


def _tokenize(tok, files: list[tuple[str, str]]) -> list[array]:
    # uint16 arrays: a few million tokens as Python lists would cost ~40 bytes each
    return [array("H", ids) for ids in tok([t for _, t in files]).input_ids] if files else []


def train(args) -> None:
    torch.manual_seed(args.seed)
    tok = _load_tokenizer(args.work / "tokenizer")
    corpus = build_corpus(_site(args), args.held_out_percent, args.max_package_bytes)
    std, pkg = _tokenize(tok, corpus["stdlib"]), _tokenize(tok, corpus["packages"])
    n_std, n_pkg = sum(map(len, std)), sum(map(len, pkg))
    # stdlib and package documents drawn with shares (1 - package_share) and package_share of the tokens
    share = args.package_share if pkg else 0.0
    weights = [len(d) * (1 - share) / n_std for d in std] + [len(d) * share / max(1, n_pkg) for d in pkg]
    sampler = FimSampler(tok, std + pkg, args.seqlen, seed=args.seed, weights=weights, line_rate=args.fim_line_share)
    model = _new_model(args, tok)
    if args.init:
        _init_from(model, args.init)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters; training tokens: {n_std / 1e6:.2f}M stdlib "
          f"({len(std)} files), {n_pkg / 1e6:.2f}M packages ({len(pkg)} files)", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    # --steps gives a step-based schedule (bit-reproducible); otherwise the schedule runs on wall-clock
    # time and training stops when --minutes is spent, so the step count depends on the machine's speed.
    # The last --long-fraction of the run trains on full-context windows so every position is learned.
    budget = args.minutes * 60
    start, step, log, ema, tokens, long_from = time.time(), 0, [], None, 0, None
    saved = start
    while step < args.steps if args.steps else time.time() - start < budget:
        progress = step / args.steps if args.steps else (time.time() - start) / budget
        if long_from is None and progress >= 1 - args.long_fraction:
            long_from, sampler.seqlen = step, args.n_positions - 1
            print(f"step {step}: full-context windows of {sampler.seqlen} tokens from now on", flush=True)
        batch_size = args.batch_size if long_from is None else args.long_batch_size
        lr = _lr(step, progress, args.lr, args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = torch.tensor([sampler.sequence() for _ in range(batch_size)])
        loss = model(input_ids=batch, labels=batch).loss  # labels are shifted inside the model
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        step, tokens = step + 1, tokens + batch.numel() - batch_size
        if step % 25 == 0:
            log.append({"step": step, "loss": round(ema, 4), "tokens": tokens,
                        "minutes": round((time.time() - start) / 60, 2)})
            print(f"step {step} loss {loss.item():.3f} (ema {ema:.3f}) lr {lr:.2e} {tokens / 1e6:.2f}M tokens "
                  f"{(time.time() - start) / 60:.1f} min", flush=True)
        if time.time() - saved > 600:  # a crash late in a long run keeps the last ten minutes' weights
            model.save_pretrained(args.work / "fp32-partial")
            saved = time.time()
    model.save_pretrained(args.work / "fp32")
    info = {"steps": step, "batch_size": args.batch_size, "seqlen": args.seqlen, "final_loss_ema": round(ema, 4),
            "long_from_step": long_from, "long_seqlen": args.n_positions - 1, "long_batch_size": args.long_batch_size,
            "tokens": tokens, "lr": args.lr, "warmup": args.warmup, "threads": args.threads,
            "fim_line_share": args.fim_line_share,
            "init": args.init.name if args.init else None,
            "train_minutes": round((time.time() - start) / 60, 1), "parameters": n_params,
            "data": {"stdlib_files": len(std), "stdlib_tokens": n_std, "package_files": len(pkg),
                     "package_tokens": n_pkg, "package_share": share,
                     "duplicates_dropped": corpus["duplicates_dropped"], "packages": corpus["provenance"]},
            "loss_log": log}
    (args.work / "train.json").write_text(json.dumps(info, indent=2))


def _lr(step: int, progress: float, peak: float, warmup: int) -> float:
    # linear warm-up, then cosine decay to a tenth of the peak over the run's progress (0..1)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, progress)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _as_checkpoint(model) -> None:
    # a reader gets the non-quantized tensors in fp16; evaluate the quantized models with those values
    quantized = {f"{n}.weight" for n, m in model.named_modules() if n.endswith(("c_attn", "c_proj", "c_fc"))}
    for name, p in model.named_parameters():
        if name not in quantized:
            p.data = p.data.half().float()


def quantize(args) -> None:
    from transformers import GPTBigCodeForCausalLM

    torch.manual_seed(args.seed)
    # the tokenizer exactly as training loaded it (see below: what ships must cut text the same way)
    tok = _load_tokenizer(args.work / "tokenizer")
    model = GPTBigCodeForCausalLM.from_pretrained(args.work / "fp32", dtype=torch.float32).eval()
    train_files, held_out = split_corpus(args.held_out_percent)
    windows = eval_windows(tok, [t for _, t in held_out], args.eval_seqlen, args.eval_windows)
    stream = []
    for ids in _tokenize(tok, train_files):
        stream += list(ids) + [tok.eos_token_id]
    calib = sample_calibration(torch.tensor(stream), args.nsamples, args.calib_seqlen, args.seed)
    cfg = QuantConfig(bits=4, group_size=-1, desc_act=True, sym=True, model_file_base_name="model")
    results = {"eval_tokens": sum(map(len, windows)), "eval_seqlen": args.eval_seqlen,
               "held_out_files": len(held_out), "perplexity": {"fp32": perplexity(model, windows)}}
    print(f"fp32: perplexity {results['perplexity']['fp32']:.3f}", flush=True)
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
    qmodel, layers = quantized["gptq"]
    qmodel.generation_config.update(**GENERATION_DEFAULTS)
    save_quantized(args.out, qmodel, layers, cfg, damp_percent=args.damp_percent,
                   model_name_or_path=None, tokenizer=args.work / "tokenizer")
    # transformers loads the built folder (no config.json) with GPT-2's plain byte-level pre-tokenizer,
    # not the digit splitting written in its tokenizer.json, and that is what training saw; ship that
    # tokenization, so the app cuts text as the model was trained (tests/scripts/test_demo_model.py)
    tok.backend_tokenizer.save(str(args.out / "tokenizer.json"))
    train_info = json.loads((args.work / "train.json").read_text()) if (args.work / "train.json").is_file() else {}
    results["train"] = {k: v for k, v in train_info.items() if k != "loss_log"}
    results["config"] = {k: getattr(model.config, k) for k in ("vocab_size", "n_positions", "n_embd", "n_layer",
                                                                 "n_head", "n_inner", "multi_query")}
    results["calibration"] = {"windows": args.nsamples, "seqlen": args.calib_seqlen}
    _write_report(args, results)
    print(json.dumps({k: v for k, v in results.items() if k != "train"}, indent=2))


REPETITION_PENALTIES = (1.0, 1.1, 1.2, 1.25, 1.3, 1.5)


def choose_defaults(args) -> None:
    """The repetition penalty of the shipped defaults, chosen on the five prompts and on FIM holes from other
    held-out functions than those `eval` reports: no line three times in a row first, then the most code
    that parses."""
    from backend.loader import load_dequantized

    tok = _load_tokenizer(args.out)
    model = load_dequantized(args.out).eval()
    held_out = build_corpus(None, args.held_out_percent, args.max_package_bytes)["held_out"]
    reported = {(h["file"], h["line"]) for h in fim_holes(held_out, args.fim_holes, args.seed)}
    holes = [h for h in fim_holes(held_out, 4 * args.fim_holes, args.seed + 1)
             if (h["file"], h["line"]) not in reported][:args.fim_holes]
    rows = []
    for penalty in REPETITION_PENALTIES:
        gen = dict(GENERATION_DEFAULTS, repetition_penalty=penalty)
        prompts = fixed_prompts(model, tok, gen)
        rows.append({"repetition_penalty": penalty,
                     "longest_line_run": max(r["longest_line_run"] for r in prompts.values()),
                     "prompts_parsing": sum(bool(r.get("parses")) for r in prompts.values()),
                     "holes_parsing": fill_holes(model, tok, gen, holes)["parse_fraction"]})
        print(rows[-1], flush=True)
    best = max(rows, key=lambda r: (r["longest_line_run"] <= 2, r["prompts_parsing"] / 4 + r["holes_parsing"],
                                    -r["repetition_penalty"]))
    path = args.out / "generation_config.json"
    config = json.loads(path.read_text())
    config["repetition_penalty"] = best["repetition_penalty"]
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    results = json.loads(args.report.read_text())
    results["defaults_choice"] = {"holes": len(holes), "seed": args.seed + 1, "candidates": rows,
                                  "chosen": best["repetition_penalty"]}
    _write_report(args, results)
    print(f"repetition_penalty {best['repetition_penalty']} -> {path}")


def evaluate(args) -> None:
    """Checks on the shipped folder itself (read back by the app's loader): perplexities at the comparison
    length and at full context, the five fixed prompts, and FIM holes cut from held-out files."""
    from backend.loader import load_dequantized

    results = json.loads(args.report.read_text())
    tok = _load_tokenizer(args.out)
    model = load_dequantized(args.out).eval()
    gen = json.loads((args.out / "generation_config.json").read_text())
    corpus = build_corpus(_site(args), args.held_out_percent, args.max_package_bytes)
    held = [t for _, t in corpus["held_out"]]
    n_ctx = model.config.n_positions
    full = eval_windows(tok, held, n_ctx, results["eval_tokens"] // n_ctx)
    windows = eval_windows(tok, held, args.eval_seqlen, args.eval_windows)
    # the codec tables in encodings/ are near-copies of training ones and fill much of the comparison windows:
    # the same held-out files without them say more about code
    prose = eval_windows(tok, [t for n, t in corpus["held_out"] if not n.startswith("encodings/")],
                         args.eval_seqlen, args.eval_windows)
    ppl = {"stdlib_shipped": perplexity(model, windows),
           "stdlib_shipped_no_codecs": perplexity(model, prose),
           f"stdlib_shipped_{n_ctx}_context": perplexity(model, full, batch_size=2)}
    results["eval_windows_no_codecs"] = len(prose)
    # per byte of the predicted text, so models with other tokenizers compare too
    n_bytes = sum(len(tok.decode(w[1:]).encode("utf-8")) for w in windows)
    results["stdlib_bits_per_byte"] = math.log2(ppl["stdlib_shipped"]) * sum(len(w) - 1 for w in windows) / n_bytes
    if corpus["held_out_packages"]:
        pkg = eval_windows(tok, [t for _, t in corpus["held_out_packages"]], args.eval_seqlen, args.eval_windows)
        ppl["packages_shipped"] = perplexity(model, pkg)
        results["held_out_package_files"] = len(corpus["held_out_packages"])
    results["perplexity"].update(ppl)
    results["generation_config"] = {k: gen[k] for k in GENERATION_DEFAULTS}
    results["prompts"] = fixed_prompts(model, tok, gen)
    results["fim_holes"] = fill_holes(model, tok, gen, fim_holes(corpus["held_out"], args.fim_holes, args.seed))
    _write_report(args, results)
    write_model_card(args.out / "README.md", results, args)
    results["files"] = {f.name: f.stat().st_size for f in sorted(args.out.iterdir())}
    _write_report(args, results)
    for name, r in results["prompts"].items():
        print(f"--- {name}: longest line run {r['longest_line_run']}, parses {r.get('parses')}\n{r['output']}")
    print(json.dumps({k: v for k, v in results.items() if k not in ("prompts", "fim_holes", "train")}, indent=2))
    print(f"FIM holes: {results['fim_holes']['parse_fraction']:.2f} parse, "
          f"{results['fim_holes']['exact_fraction']:.2f} exact")


def _write_report(args, results: dict) -> None:
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("step", choices=("tokenizer", "train", "quantize", "defaults", "eval", "all"))
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="unquantized weights and tokenizer (outside the repo)")
    parser.add_argument("--out", type=Path, default=REPO / "models" / "starcoder-demo")
    parser.add_argument("--report", type=Path, default=REPO / "scripts" / "demo-model.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--held-out-percent", type=int, default=5)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--n-positions", type=int, default=2048)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=511, help="training window before the full-context phase")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--long-fraction", type=float, default=0.2,
                        help="last part of the run (of --minutes or --steps) on windows of n_positions - 1 tokens")
    parser.add_argument("--long-batch-size", type=int, default=2)
    parser.add_argument("--site-packages", type=Path, default=Path(sysconfig.get_paths()["purelib"]),
                        help="where the packages of demo_data.PACKAGES are installed")
    parser.add_argument("--package-share", type=float, default=0.2, help="share of training tokens from packages")
    parser.add_argument("--max-package-bytes", type=int, default=1_000_000)
    parser.add_argument("--eval-seqlen", type=int, default=512, help="held-out windows (512 compares with earlier models)")
    parser.add_argument("--fim-line-share", type=float, default=0.7,
                        help="share of FIM samples whose middle is 1-4 lines, from the first line's code to the last "
                             "line's end (the rest: StarCoder's split at two random characters)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=120.0, help="wall-clock training budget")
    parser.add_argument("--steps", type=int, default=None, help="exact step count (overrides --minutes)")
    parser.add_argument("--init", type=Path, default=None,
                        help="continue from an earlier demo model folder (same layers and width; more positions allowed)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nsamples", type=int, default=32, help="GPTQ calibration windows")
    parser.add_argument("--calib-seqlen", type=int, default=2048, help="tokens per calibration window")
    parser.add_argument("--fim-holes", type=int, default=50, help="held-out FIM holes in the eval step")
    parser.add_argument("--damp-percent", type=float, default=0.01)
    parser.add_argument("--eval-windows", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    for name, fn in (("tokenizer", build_tokenizer), ("train", train), ("quantize", quantize),
                     ("defaults", choose_defaults), ("eval", evaluate)):
        if args.step in (name, "all"):
            fn(args)


if __name__ == "__main__":
    main()
