"""Synthetic StarCoder benchmark: random GPTQ weights built on the device, decode and prefill vs dense."""
from __future__ import annotations

import argparse
import gc
import inspect
import json
import sys
import time
from pathlib import Path

# run as a script, this folder comes first on sys.path and its kernels.py would shadow the package
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import torch
from torch import nn
from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

from backend.loader import build_skeleton, kernel_report, quantized_linears  # noqa: E402
from backend.quant_config import QuantConfig  # noqa: E402
from bench.kernels import OUT, copy_bandwidth_gbs, random_gptq_state, versions  # noqa: E402



def starcoder_config(small: bool) -> GPTBigCodeConfig:
    if small:
        return GPTBigCodeConfig(n_embd=2048, n_layer=4, n_head=16, n_inner=8192, vocab_size=49152,
                                n_positions=2048, multi_query=True)
    return GPTBigCodeConfig(n_embd=6144, n_layer=40, n_head=48, n_inner=24576, vocab_size=49152,
                            n_positions=8192, multi_query=True)


class BF16Island(nn.Module):
    """Runs a bf16-only layer inside an fp32 model: what a CPU without fast bf16 GEMMs wants."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(torch.bfloat16)).to(x.dtype)


def build_model(config: GPTBigCodeConfig, device: torch.device, dtype: torch.dtype, kernel: str | None,
                bits: int, group_size: int, act_order: bool, quant_dtype: torch.dtype | None = None):
    """GPTBigCode with random weights, made on `device` without a dense copy of the quantized layers."""
    quant_dtype = quant_dtype or dtype
    chosen: dict[str, str] = {}
    if kernel is not None:
        qcfg = QuantConfig(bits=bits, group_size=group_size, desc_act=act_order, sym=False)
        # the quantized layers are chosen for quant_dtype; the rest of the model computes in dtype
        model = build_skeleton(config, qcfg, quant_dtype, kernel, {"": device}).to(dtype)
        chosen = kernel_report(model)
    else:
        with torch.device("meta"):
            model = GPTBigCodeForCausalLM(config).to(dtype)
    model = model.to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.fill_(1.0)
            elif p.dim() == 1:
                p.zero_()
            else:
                p.normal_(0.0, 0.02)
        # to_empty left the legacy causal-mask buffer uninitialised
        mask = getattr(model.transformer, "bias", None)
        if isinstance(mask, torch.Tensor):
            mask.copy_(torch.ones(mask.shape, dtype=torch.bool, device=device).tril().to(mask.dtype))
    model.tie_weights()
    if kernel is not None:
        for name, layer in list(quantized_linears(model)):
            state = random_gptq_state(layer.in_features, layer.out_features, bits, group_size, act_order, device)
            state["bias"] = state["bias"].to(quant_dtype)
            layer.load_state_dict(state, assign=True)
            layer.post_init()
            if quant_dtype != dtype:
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent), attr, BF16Island(layer))
    return model.eval(), chosen


def bytes_per_token(model: nn.Module) -> int:
    """Weights one decoded token reads: every parameter and buffer except the embedding tables."""
    skip = {id(model.transformer.wte.weight), id(model.transformer.wpe.weight)}
    lm = model.lm_head.weight
    tensors = list(model.parameters()) + [b for name, b in model.named_buffers() if name != "transformer.bias"]
    total = sum(t.numel() * t.element_size() for t in tensors if id(t) not in skip and t is not lm)
    return total + lm.numel() * lm.element_size()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def measure(model: nn.Module, device: torch.device, prompt_len: int, decode_tokens: int,
            prefill_len: int, prefill_reps: int) -> dict[str, float]:
    params = inspect.signature(model.forward).parameters
    # transformers renamed the cache argument across versions
    cache_kw = "past_key_values" if "past_key_values" in params else "cache"
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)

    def step(ids, cache):
        kwargs = {cache_kw: cache} if cache is not None else {}
        out = model(input_ids=ids, use_cache=True, **kwargs, **extra)
        new_cache = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
        return out.logits[:, -1:].argmax(-1), new_cache

    prompt = torch.randint(0, vocab, (1, prompt_len), generator=gen).to(device)
    tok, cache = step(prompt, None)
    for _ in range(3):
        tok, cache = step(tok, cache)
    sync(device)
    start = time.perf_counter()
    for _ in range(decode_tokens):
        tok, cache = step(tok, cache)
    sync(device)
    decode_s = time.perf_counter() - start
    long = torch.randint(0, vocab, (1, prefill_len), generator=gen).to(device)
    step(long, None)
    sync(device)
    start = time.perf_counter()
    for _ in range(prefill_reps):
        step(long, None)
    sync(device)
    prefill_s = (time.perf_counter() - start) / prefill_reps
    return {"decode_tok_s": decode_tokens / decode_s, "decode_ms_per_tok": 1e3 * decode_s / decode_tokens,
            "prefill_ms": 1e3 * prefill_s, "prefill_tok_s": prefill_len / prefill_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cpu-small", action="store_true", help="hidden 2048, 4 layers, on CPU")
    parser.add_argument("--kernel", default="auto")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=-1)
    parser.add_argument("--no-act-order", action="store_true")
    parser.add_argument("--decode-tokens", type=int, default=None)
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the results (default bench/out/starcoder_synthetic_<gpu|cpu_small>.json)")
    args = parser.parse_args()
    small = args.cpu_small
    device = torch.device("cpu" if small else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --cpu-small here, or on a GPU machine")
    config = starcoder_config(small)
    decode_tokens = args.decode_tokens or (16 if small else 128)
    prefill_reps = 2 if small else 5
    act_order = not args.no_act_order
    bandwidth = copy_bandwidth_gbs(device)
    # (label, compute dtype, quantized-layer dtype or None for dense)
    if small:
        runs = [("dense fp32", torch.float32, None), ("cpu_int4, fp32 model", torch.float32, torch.bfloat16),
                ("cpu_int4, bf16 model", torch.bfloat16, torch.bfloat16)]
    else:
        runs = [("gptq fp16", torch.float16, torch.float16), ("dense fp16", torch.float16, None)]
    results = []
    for label, dtype, quant_dtype in runs:
        start = time.perf_counter()
        model, chosen = build_model(config, device, dtype, args.kernel if quant_dtype else None, args.bits,
                                    args.group_size, act_order, quant_dtype)
        build_s = time.perf_counter() - start
        per_token = bytes_per_token(model)
        row = {"run": label, "kernels": sorted(set(chosen.values())), "build_s": build_s,
               "GB_per_token": per_token / 1e9, "bandwidth_limit_tok_s": bandwidth * 1e9 / per_token}
        row.update(measure(model, device, 16, decode_tokens, args.prefill, prefill_reps))
        row["fraction_of_limit"] = row["decode_tok_s"] / row["bandwidth_limit_tok_s"]
        results.append(row)
        print(f"{label:24} decode {row['decode_tok_s']:8.2f} tok/s ({row['decode_ms_per_tok']:.1f} ms), "
              f"prefill {args.prefill} in {row['prefill_ms']:.0f} ms, {row['GB_per_token']:.2f} GB/token, "
              f"limit {row['bandwidth_limit_tok_s']:.0f} tok/s ({100 * row['fraction_of_limit']:.0f}%), "
              f"kernels {row['kernels']}, built in {build_s:.1f} s", flush=True)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    dense = next(r for r in results if r["run"].startswith("dense"))
    for r in results:
        r["decode_vs_dense"] = r["decode_tok_s"] / dense["decode_tok_s"]
        r["prefill_time_vs_dense"] = r["prefill_ms"] / dense["prefill_ms"]
        print(f"{r['run']:24} decode {r['decode_vs_dense']:.2f}x dense, prefill time "
              f"{r['prefill_time_vs_dense']:.2f}x dense")
    path = args.json or OUT / f"starcoder_synthetic_{'cpu_small' if small else 'gpu'}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"versions": versions(), "copy_GBps": bandwidth, "config": config.to_dict(),
                                "bits": args.bits, "group_size": args.group_size, "act_order": act_order,
                                "results": results}, indent=1, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
