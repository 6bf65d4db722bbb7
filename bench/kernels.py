"""Per-layer GPTQ kernel timings on StarCoder's four layer shapes against dense matmuls and copy bandwidth."""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

# run as a script, this folder comes first on sys.path and its kernels.py would shadow the package
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import torch

from backend.qlinear import BACKENDS, BaseQuantLinear, LayerSpec  # noqa: E402

SHAPES = [("attn.c_attn", 6144, 6400), ("attn.c_proj", 6144, 6144), ("mlp.c_fc", 6144, 24576),
          ("mlp.c_proj", 24576, 6144)]
OUT = Path(__file__).resolve().parent / "out"


def random_gptq_state(K: int, N: int, bits: int, group_size: int, act_order: bool,
                      device: torch.device, bias: bool = True) -> dict[str, torch.Tensor]:
    """A random layer in the exact GPTQ layout; any int32 word is a valid packed block."""
    g = K if group_size == -1 else group_size
    groups = -(-K // g)
    words = lambda *shape: torch.randint(-2**31, 2**31 - 1, shape, dtype=torch.int32, device=device)  # noqa: E731
    state = {"qweight": words(K * bits // 32, N), "qzeros": words(groups, N * bits // 32),
             "scales": (torch.rand(groups, N, device=device) * 0.01 + 0.001).half()}
    order = torch.randperm(K, device=device) if act_order and g < K else torch.arange(K, device=device)
    g_idx = torch.empty(K, dtype=torch.int32, device=device)
    g_idx[order] = (torch.arange(K, device=device) // g).to(torch.int32)
    state["g_idx"] = g_idx
    if bias:
        state["bias"] = torch.randn(N, device=device).half() * 0.01
    return state


def build_quant_linear(cls: type[BaseQuantLinear], spec: LayerSpec) -> BaseQuantLinear:
    """Construct on meta, assign random tensors, post_init: the loader's lifecycle."""
    layer = cls(spec, device="meta")
    state = random_gptq_state(spec.in_features, spec.out_features, spec.bits, spec.group_size, spec.desc_act,
                              spec.device)
    state["bias"] = state["bias"].to(spec.dtype)
    layer.load_state_dict(state, assign=True)
    layer.post_init()
    return layer


def time_ms(fn, device: torch.device, reps: int, warmup: int = 2) -> float:
    """Median wall time of `fn` in ms after warm-up (CUDA: synchronised per call)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        import triton.testing
        return triton.testing.do_bench(fn, warmup=10, rep=max(50, reps))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def copy_bandwidth_gbs(device: torch.device) -> float:
    """Measured device copy bandwidth: bytes read + written per second."""
    src = torch.empty(256 * 2**20 // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, 10)
    return 2 * src.numel() * 4 / ms / 1e6


def weight_bytes(K: int, N: int, bits: int, group_size: int) -> int:
    groups = -(-K // (K if group_size == -1 else group_size))
    return K * N * bits // 8 + groups * N * (2 + bits / 8)


def versions() -> dict[str, str]:
    import transformers
    out = {"torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
           "threads": str(torch.get_num_threads())}
    try:
        import triton
        out["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--m", type=int, nargs="+", default=None, help="rows of x (default 1 16 512)")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=-1)
    parser.add_argument("--act-order", action="store_true")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the results (default bench/out/kernels_<device>_b<bits>_g<group>[_act].json)")
    args = parser.parse_args()
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    ms_list = args.m or ([1, 16] if cpu else [1, 16, 512])
    reps = args.reps or (10 if cpu else 100)
    dense_dtypes = [torch.float32, torch.bfloat16] if cpu else [torch.float16, torch.bfloat16]
    quant_dtypes = [torch.bfloat16] if cpu else [torch.float16, torch.bfloat16]
    bandwidth = copy_bandwidth_gbs(device)
    rows = []
    for name, K, N in SHAPES:
        w_bytes = weight_bytes(K, N, args.bits, args.group_size)
        for M in ms_list:
            for dtype in dense_dtypes:
                if cpu and dtype == torch.bfloat16 and M > 1:
                    continue  # dense bf16 matmul on CPUs without AMX is minutes per shape
                w = torch.randn(K, N, device=device, dtype=dtype)
                x = torch.randn(M, K, device=device, dtype=dtype)
                slow = cpu and dtype == torch.bfloat16
                ms = time_ms(lambda: x @ w, device, 3 if slow else reps, 1 if slow else 2)
                rows.append({"layer": name, "K": K, "N": N, "M": M, "kernel": f"dense {str(dtype)[6:]}",
                             "ms": ms, "weight_GBps": K * N * w.element_size() / ms / 1e6})
                del w
            for dtype in quant_dtypes:
                spec = LayerSpec(bits=args.bits, group_size=args.group_size, desc_act=args.act_order, sym=False,
                                 in_features=K, out_features=N, device=device, dtype=dtype)
                for cls in BACKENDS:
                    if cls.validate(spec) is not None or (cls.NAME == "triton" and cpu):
                        continue
                    if cls.NAME == "torch" and M > 1:
                        continue  # the reference dequantizes every call; one row shows its cost
                    layer = build_quant_linear(cls, spec)
                    x = torch.randn(M, K, device=device, dtype=dtype)
                    slow = cls.NAME == "torch" and cpu   # seconds per call: one call shows it
                    with torch.no_grad():
                        ms = time_ms(lambda: layer(x), device, 1 if slow else reps, 0 if slow else 2)
                    rows.append({"layer": name, "K": K, "N": N, "M": M,
                                 "kernel": f"{cls.NAME} {str(dtype)[6:]}", "ms": ms,
                                 "weight_GBps": w_bytes / ms / 1e6})
                    del layer
            for r in rows:
                if r["layer"] == name and r["M"] == M:
                    dense = next(d["ms"] for d in rows if d["layer"] == name and d["M"] == M
                                 and d["kernel"].startswith("dense"))
                    r["speedup_vs_first_dense"] = dense / r["ms"]
                    r["bandwidth_fraction"] = r["weight_GBps"] / bandwidth
    header = f"{'layer':12} {'KxN':>12} {'M':>4} {'kernel':18} {'ms':>9} {'GB/s':>7} {'%copy':>6} {'x dense':>8}"
    print(f"device {device}, copy bandwidth {bandwidth:.1f} GB/s, {args.bits}-bit, group {args.group_size}, "
          f"act-order {args.act_order}")
    print(header)
    for r in rows:
        print(f"{r['layer']:12} {r['K']:>5}x{r['N']:<6} {r['M']:>4} {r['kernel']:18} {r['ms']:9.3f} "
              f"{r['weight_GBps']:7.1f} {100 * r['bandwidth_fraction']:5.0f}% {r['speedup_vs_first_dense']:7.2f}x")
    # named by the configuration, so the group -1 and group 128 runs keep both results
    act = "_act" if args.act_order else ""
    path = args.json or OUT / f"kernels_{device.type}_b{args.bits}_g{args.group_size}{act}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"versions": versions(), "copy_GBps": bandwidth, "bits": args.bits,
                                "group_size": args.group_size, "act_order": args.act_order,
                                "rows": rows}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
