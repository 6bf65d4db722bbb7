"""Write GPTQ test checkpoints with the real AutoGPTQ / GPTQModel libraries, plus their own logits.

NOT part of the app and not run by the tests. It needs AutoGPTQ or GPTQModel installed in a
separate Python environment (they pin other transformers/torch versions than the app); the app's
own environment must not have them. Run it once per library, from the repository root:

    python scripts/make_library_fixtures.py autogptq  --out tests/fixtures/autogptq
    python scripts/make_library_fixtures.py gptqmodel --out tests/fixtures/gptqmodel

What it does for every case (bits, group size, act-order, sym):
  1. builds a tiny random GPTBigCode model (same shape family as StarCoder: multi-query attention)
     and saves it in fp16 as a plain transformers model;
  2. quantizes it with the library's own GPTQ on CPU, on a few random calibration sequences;
  3. saves it with the library's own save function (safetensors, model.safetensors);
  4. loads it back with the library's own loader on CPU (its pure-torch kernel) in float32 and saves
     the logits for a fixed input as expected_logits.safetensors.

The libraries were written for CUDA. Their GPTQ math and packing are plain torch, but a few calls
assume a GPU (`torch.cuda.is_available()` guards, `torch.cuda.synchronize()`, moving a layer to
"cuda:0" while it is quantized). Those are patched to the CPU below, only inside this script; the
quantization, packing, saving and inference code that runs is the libraries' own.

The written config.json's `_name_or_path` and quantize_config.json's `model_name_or_path` would hold
the temporary folder's path; they are replaced by the case name so the fixtures carry no local path.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

INPUT_IDS = [[1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 41, 45]]
SEED = 1234

# (name, bits, group_size, desc_act, sym). With group_size -1, act-order leaves no trace in the file
# (g_idx is all zeros), so that half of the grid keeps two corners only: TheBloke's recipe (act, sym)
# and (no act, asym). With group 32, g_idx is a permutation pattern under act-order; (act, sym) is
# left out there only to keep all fixtures under 1 MB (act-order and sym are each covered elsewhere).
def _name(bits, g, act, sym, fmt="gptq", variant=""):
    return (f"b{bits}_g{'none' if g == -1 else g}_{'act' if act else 'noact'}_{'sym' if sym else 'asym'}"
            + ("" if fmt == "gptq" else f"_{fmt}") + (f"_{variant}" if variant else ""))


CASES = {
    "autogptq": [(4, -1, True, True), (4, -1, False, False), (4, 32, False, True), (4, 32, False, False),
                 (4, 32, True, False), (3, 32, True, False), (8, 32, False, True),
                 # asym with a zero point of 0: see ZERO0_ROWS
                 (4, 32, False, False, "gptq", "zero0")],
    # GPTQModel: fewer corners, to keep all fixtures under 1 MB; it saves v1 ("gptq") by default, and
    # "gptq_v2" (zero points stored without the minus one) when asked
    "gptqmodel": [(4, 32, False, True), (4, 32, True, False), (4, 32, True, False, "gptq_v2")],
}


def tiny_config():
    from transformers import GPTBigCodeConfig

    return GPTBigCodeConfig(vocab_size=96, n_positions=64, n_embd=64, n_layer=2, n_head=4, n_inner=128,
                            multi_query=True, activation_function="gelu_pytorch_tanh", bos_token_id=0,
                            eos_token_id=0, tie_word_embeddings=True,
                            # 10x the usual init: logits of order 1, so a misread weight shows
                            initializer_range=0.2)


# The "zero0" variant: in layer 0's mlp.c_fc these output rows get non-negative weights over the first
# 32 inputs, so asymmetric quantization of that group (without act-order it is quantized first, before
# GPTQ updates any weight) has min 0 and a zero point of 0. v1 stores zero - 1 = -1: AutoGPTQ's pack()
# turns it into 0xFFFFFFFF and ORs it, shifted, into the word, which also overwrites the zero points of
# the higher columns sharing that word: the overflow that GPTQModel's v2 format was made to avoid.
ZERO0_LAYER, ZERO0_ROWS = "transformer.h.0.mlp.c_fc.weight", (3, 10, 17)


def save_base_model(path: Path, zero0: bool = False) -> None:
    from transformers import GPTBigCodeForCausalLM

    torch.manual_seed(SEED)
    model = GPTBigCodeForCausalLM(tiny_config())
    with torch.no_grad():   # biases non-zero so a misplaced bias shows in the logits
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.02)
        if zero0:
            w = dict(model.named_parameters())[ZERO0_LAYER]
            for row in ZERO0_ROWS:
                w[row, :32] = w[row, :32].abs()
    model.to(torch.float16).save_pretrained(path, safe_serialization=True)


def save_tokenizer(path: Path) -> None:
    """A 96-token word-level tokenizer: GPTQModel.load insists on one; the ids are all we use."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, **{f"t{i}": i for i in range(1, 96)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                            unk_token="<|endoftext|>", pad_token="<|endoftext|>").save_pretrained(path)


def calibration(n: int = 8, length: int = 32) -> list[dict]:
    gen = torch.Generator().manual_seed(SEED + 1)
    ids = torch.randint(0, 96, (n, length), generator=gen)
    return [{"input_ids": row.unsqueeze(0), "attention_mask": torch.ones(1, length, dtype=torch.long)} for row in ids]


@contextlib.contextmanager
def patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def clean_folder(out: Path, case: str, files: list[str]) -> None:
    """Drop everything but the fixture files, and local paths from the JSON the library wrote."""
    for p in out.iterdir():
        if p.name not in files:
            p.unlink() if p.is_file() else shutil.rmtree(p)
    for name in ("config.json", "quantize_config.json"):
        path = out / name
        raw = json.loads(path.read_text())
        for key in ("_name_or_path", "model_name_or_path"):
            if key in raw:
                raw[key] = case
        qc = raw.get("quantization_config")
        if isinstance(qc, dict) and "model_name_or_path" in qc:
            qc["model_name_or_path"] = case
        path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")


def write_common(out: Path, logits: torch.Tensor, readme: str) -> None:
    from safetensors.torch import save_file

    save_file({"logits": logits.detach().to(torch.float32).contiguous()}, str(out / "expected_logits.safetensors"))
    (out / "input_ids.json").write_text(json.dumps({"input_ids": INPUT_IDS}) + "\n")
    (out / "README.md").write_text(readme)


# ---------------------------------------------------------------- AutoGPTQ

def make_autogptq(case, bits, group, act, sym, fmt, base: Path, out: Path) -> None:
    assert fmt == "gptq", "AutoGPTQ writes gptq (v1) only"
    import auto_gptq
    import auto_gptq.modeling._base as agbase
    import transformers
    from auto_gptq import AutoGPTQForCausalLM, BaseQuantizeConfig

    cpu = torch.device("cpu")
    qcfg = BaseQuantizeConfig(bits=bits, group_size=group, desc_act=act, sym=sym, damp_percent=0.01,
                              true_sequential=True, static_groups=False, model_file_base_name="model")
    with patched(torch.cuda, "is_available", lambda: True):     # from_pretrained's "needs CUDA" guard
        model = AutoGPTQForCausalLM.from_pretrained(str(base), qcfg, torch_dtype=torch.float16)
    with patched(agbase, "CUDA_0", cpu), patched(torch.cuda, "synchronize", lambda *a, **k: None):
        model.quantize(calibration(), use_triton=False)
    model.save_quantized(str(out), use_safetensors=True)
    del model

    qmodel = AutoGPTQForCausalLM.from_quantized(
        str(out), device="cpu", use_safetensors=True, use_triton=False, disable_exllama=True,
        disable_exllamav2=True, use_marlin=False, use_qigen=False, torch_dtype=torch.float32)
    kernel = type(next(m for m in qmodel.modules() if hasattr(m, "qweight"))).__module__
    with torch.no_grad():
        logits = qmodel(input_ids=torch.tensor(INPUT_IDS)).logits
    clean_folder(out, case, ["config.json", "quantize_config.json", "model.safetensors"])
    write_common(out, logits, f"""# {case}

Written by AutoGPTQ {auto_gptq.__version__} (transformers {transformers.__version__}, torch {torch.__version__}),
by `scripts/make_library_fixtures.py autogptq`: a tiny random GPTBigCode model (vocab 96, n_embd 64,
2 layers, 4 heads, multi-query) quantized on CPU with AutoGPTQ's own GPTQ
(`AutoGPTQForCausalLM.from_pretrained(...).quantize(...)`) with bits={bits}, group_size={group},
desc_act={act}, sym={sym}, and saved by its `save_quantized(use_safetensors=True)`.

`expected_logits.safetensors` (key `logits`, float32, shape [1, 12, 96]) is AutoGPTQ's own output for
`input_ids.json`, from `from_quantized(device="cpu", torch_dtype=torch.float32, use_triton=False,
disable_exllama=True, disable_exllamav2=True)`, i.e. its pure-torch dequantize path
(`{kernel}`). Only `_name_or_path`/`model_name_or_path` in the JSON files were rewritten.
""")


# ---------------------------------------------------------------- GPTQModel

def make_gptqmodel(case, bits, group, act, sym, fmt, base: Path, out: Path) -> None:
    # its default CPU pool (cores/2 workers) is smaller than its model loader's fixed 2 on a 2-core box
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    import gptqmodel
    import transformers
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig

    # desc_act=False gets GPTQModel's default there (act_group_aware on: its "GAR" reordering, which
    # must leave no trace in the file); desc_act=True needs act_group_aware off.
    extra = {"act_group_aware": False} if act else {}
    qcfg = QuantizeConfig(bits=bits, group_size=group, desc_act=act, sym=sym, damp_percent=0.01,
                          format=fmt, offload_to_disk=False, **extra)
    model = GPTQModel.load(str(base), qcfg, device="cpu", dtype=torch.float16)
    model.quantize(calibration(), batch_size=1, backend=BACKEND.GPTQ_TORCH)
    model.save(str(out))
    del model

    # Its torch kernel (TorchLinear) refuses to load in float32 ("only supports float16, bfloat16"), so
    # load in float16 as it wants, then cast the loaded model to float32: the same kernel code then
    # dequantizes with float32 scales (exact: fp16 values) and multiplies in float32. The float16 run's
    # logits are printed beside it as a measure of fp16 noise.
    qmodel = GPTQModel.load(str(out), device="cpu", backend=BACKEND.GPTQ_TORCH, dtype=torch.float16)
    qlinears = [m for m in qmodel.model.modules() if hasattr(m, "qweight")]
    kernel = type(qlinears[0]).__module__ + "." + type(qlinears[0]).__name__
    ids = torch.tensor(INPUT_IDS)
    with torch.no_grad():
        logits16 = qmodel.model(input_ids=ids).logits.float()
        qmodel.model.to(torch.float32)
        for m in qlinears:
            if hasattr(m, "clear_weight_cache"):
                m.clear_weight_cache()
        logits = qmodel.model(input_ids=ids).logits
    assert all(m.scales.dtype == torch.float32 for m in qlinears) and logits.dtype == torch.float32
    print(f"  {case}: |fp16 run - fp32 run| max {(logits16 - logits).abs().max().item():.2e}, "
          f"logits |max| {logits.abs().max().item():.2f}", file=sys.stderr, flush=True)
    weights = sorted(p.name for p in out.glob("*.safetensors"))
    assert weights == ["model.safetensors"], f"GPTQModel wrote {weights}"
    clean_folder(out, case, ["config.json", "quantize_config.json", "model.safetensors"])
    write_common(out, logits, f"""# {case}

Written by GPTQModel {gptqmodel.__version__} (transformers {transformers.__version__}, torch {torch.__version__}),
by `scripts/make_library_fixtures.py gptqmodel`: a tiny random GPTBigCode model (vocab 96, n_embd 64,
2 layers, 4 heads, multi-query) quantized on CPU with GPTQModel's own GPTQ
(`GPTQModel.load(base, QuantizeConfig(...), device="cpu").quantize(..., backend=BACKEND.GPTQ_TORCH)`)
with bits={bits}, group_size={group}, desc_act={act}, sym={sym}, act_group_aware={not act}, format="{fmt}",
and saved by its `save()` (safetensors).

`expected_logits.safetensors` (key `logits`, float32, shape [1, 12, 96]) is GPTQModel's own output for
`input_ids.json`, from `GPTQModel.load(folder, device="cpu", backend=BACKEND.GPTQ_TORCH,
dtype=torch.float16)` (`{kernel}`, which refuses float32 at load) followed by `model.to(torch.float32)`,
so its own kernel ran in float32. Only `_name_or_path`/`model_name_or_path` in the JSON files
were rewritten.
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lib", choices=["autogptq", "gptqmodel"], help="which library writes the fixtures")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", nargs="*", help="case names to (re)make; default: all")
    args = ap.parse_args()
    make = make_autogptq if args.lib == "autogptq" else make_gptqmodel
    cases = [(_name(*c), *(c + ("gptq", ""))[:6]) for c in CASES[args.lib]]
    if args.only:
        cases = [c for c in cases if c[0] in args.only]
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        save_base_model(base)
        save_tokenizer(base)
        save_base_model(Path(tmp) / "base_zero0", zero0=True)
        save_tokenizer(Path(tmp) / "base_zero0")
        for case, bits, group, act, sym, fmt, variant in cases:
            out = args.out / case
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            print(f"[{args.lib}] {case}", file=sys.stderr, flush=True)
            make(case, bits, group, act, sym, fmt, Path(tmp) / ("base_" + variant if variant else "base"), out)


if __name__ == "__main__":
    main()
