"""Load time of a synthetic ~2 GB GPTQ checkpoint against the time to read its file (goal: within 1.5×)."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GPTBigCodeConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backend.loader import build_skeleton, from_quantized  # noqa: E402
from backend.quant_config import QuantConfig  # noqa: E402


def write_synthetic(folder: Path, layers: int) -> Path:
    """StarCoder-shaped layers with random 4-bit data in TheBloke's layout (group -1, act-order, sym)."""
    config = GPTBigCodeConfig(vocab_size=49152, n_positions=8192, n_embd=6144, n_layer=layers, n_head=48,
                              n_inner=24576, multi_query=True, activation_function="gelu_pytorch_tanh")
    qcfg = QuantConfig(bits=4, group_size=-1, desc_act=True, sym=True, model_file_base_name="model")
    skeleton = build_skeleton(config, qcfg, torch.float16)
    state = {}
    for name, ref in skeleton.state_dict().items():
        if ref.dtype == torch.int32:
            if name.endswith("qzeros"):
                state[name] = torch.full(ref.shape, 0x77777777, dtype=torch.int32)
            elif name.endswith("g_idx"):
                state[name] = torch.zeros(ref.shape, dtype=torch.int32)
            else:
                state[name] = torch.randint(-2**31, 2**31 - 1, ref.shape, dtype=torch.int32)
        else:
            state[name] = (torch.randn(ref.shape) * 0.02).half()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = config.to_dict()
    cfg["quantization_config"] = qcfg.to_dict()
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "quantize_config.json").write_text(json.dumps(qcfg.to_dict()))
    return folder / "model.safetensors"


def read_file(path: Path) -> float:
    start = time.perf_counter()
    buf = bytearray(64 << 20)
    with open(path, "rb", buffering=0) as fh:
        while fh.readinto(buf):
            pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=8, help="StarCoder-shaped layers (8 ≈ 2.2 GB)")
    parser.add_argument("--kernels", default="torch,auto")
    parser.add_argument("--dtypes", default="float16,bfloat16",
                        help="float16 keeps the checkpoint's tensors as they are (mmap); bfloat16 converts them")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).with_name("out") / "load_time.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_synthetic(Path(tmp) / "synthetic", args.layers)
        size = path.stat().st_size
        read_file(path)                        # warm the page cache: both sides then read from memory
        rows = [("read file", min(read_file(path) for _ in range(args.repeats)), "")]
        for kernel in args.kernels.split(","):
            for dtype in args.dtypes.split(","):
                times, report = [], ""
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    try:
                        model = from_quantized(path.parent, kernel=kernel, device="cpu", torch_dtype=dtype)
                    except ValueError as exc:       # a forced kernel that cannot serve this dtype
                        report = str(exc).split(";")[0]
                        break
                    times.append(time.perf_counter() - start)
                    report = ",".join(sorted(set(model.kernel_report.values())))
                    del model
                if times:
                    rows.append((f"from_quantized {kernel}/{dtype}", min(times), report))
    base = rows[0][1]
    print(f"synthetic checkpoint: {size / 1e9:.2f} GB, {args.layers} StarCoder-shaped layers, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'step':34s} {'seconds':>8s} {'GB/s':>7s} {'× read':>7s}  backends")
    for name, seconds, report in rows:
        print(f"{name:34s} {seconds:8.2f} {size / seconds / 1e9:7.2f} {seconds / base:7.2f}  {report}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"bytes": size, "rows": [{"step": n, "seconds": s, "backends": r}
                                                       for n, s, r in rows]}, indent=2))


if __name__ == "__main__":
    main()
