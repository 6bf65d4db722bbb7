"""Fixtures for kernel tests: random GPTQ layers packed by the reference, the Triton interpreter and its probe."""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest
import torch

from kernels import reference

if TYPE_CHECKING:  # importing backend.qlinear here would import triton before the interpreter is set
    from backend.qlinear.base import LayerSpec

ROOT = Path(__file__).resolve().parents[2]


def _triton_interprets() -> bool:
    # triton fixes its own library's mode (tl.sum's combine fn, ...) when first imported, so the
    # interpreter only works if triton was imported with TRITON_INTERPRET=1 set
    if "triton" not in sys.modules and not torch.cuda.is_available():
        saved = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        import triton.language  # noqa: F401
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved
    import triton.language.standard as standard
    return type(standard.cdiv).__name__ == "InterpretedFunction"


def _probe_kernel(out_ptr, n):
    acc = tl.zeros([1], dtype=tl.int32)
    for _ in range(tl.program_id(0), n):  # a loop bound held in a tensor, as in our split-K loops
        acc += 1
    tl.store(out_ptr + tl.arange(0, 1), acc)


@functools.cache
def interpreter_blocker() -> str | None:
    """Why Triton's interpreter cannot run our kernels here; None when it can. Call it interpreting."""
    import numpy
    import triton

    out = torch.zeros(1, dtype=torch.int32)
    try:
        triton.jit(_probe_kernel)[(1,)](out, 3)
    except Exception as exc:
        if "0-dimensional" not in str(exc):
            raise
        # numpy 2.4 stopped converting 1-element arrays to scalars; older interpreters rely on it
        return (f"the Triton {triton.__version__} interpreter cannot run with numpy {numpy.__version__} "
                f"({exc}); use a newer triton or numpy < 2.4 for the CPU kernel tests (the GPU path "
                "does not use the interpreter)")
    assert out.item() == 3, f"the Triton interpreter miscounted a loop: {out.item()} instead of 3"
    return None


_triton_interprets()
import triton.language as tl  # noqa: E402  (only after the interpreter mode is settled above)

SKIPPED = "skipped: "
_SUBPROCESS: dict[str, dict[str, str | None]] = {}


def _rerun_interpreted(path: str) -> dict[str, str | None]:
    """Run a whole test module in a fresh process with TRITON_INTERPRET=1: test name -> failure."""
    if path not in _SUBPROCESS:
        report = Path(tempfile.mkdtemp()) / "interpreter.xml"
        env = dict(os.environ, TRITON_INTERPRET="1")
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not gpu",
                        f"--junitxml={report}", path], cwd=ROOT, env=env, capture_output=True, timeout=900)
        results = {}
        for case in ET.parse(report).getroot().iter("testcase"):
            bad = case.find("failure")
            bad = bad if bad is not None else case.find("error")
            skipped = case.find("skipped")
            if skipped is not None:
                results[case.get("name")] = SKIPPED + (skipped.get("message") or "")
            else:
                results[case.get("name")] = None if bad is None else (bad.get("message") or "") + (bad.text or "")
        report.unlink()
        _SUBPROCESS[path] = results
    return _SUBPROCESS[path]


@pytest.fixture
def interpreter(request, monkeypatch) -> bool:
    """Run Triton kernels on CPU tensors through its interpreter. False means the test already
    passed in a TRITON_INTERPRET=1 subprocess and its body should return at once."""
    if _triton_interprets():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        blocker = interpreter_blocker()
        if blocker:
            pytest.skip(blocker)
        return True
    # triton was imported earlier in this session without the interpreter: run the module again
    # in a fresh process and report this test's result from there
    results = _rerun_interpreted(str(request.path))
    name = request.node.name
    if name not in results:
        pytest.fail(f"{name} did not run in the TRITON_INTERPRET=1 subprocess")
    if results[name] is not None and results[name].startswith(SKIPPED):
        pytest.skip(results[name][len(SKIPPED):])
    if results[name] is not None:
        pytest.fail(f"under TRITON_INTERPRET=1 in a subprocess:\n{results[name][-4000:]}")
    return False


def make_gptq_tensors(K: int, N: int, bits: int, group_size: int, act_order: bool, sym: bool,
                      bias: bool = True, zero_offset: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random layer in AutoGPTQ's layout: qweight, qzeros, scales, g_idx (+ bias)."""
    gen = torch.Generator().manual_seed(seed)
    g = K if group_size == -1 else group_size
    groups = -(-K // g)
    top = (1 << bits) - 1
    q = torch.randint(0, top + 1, (K, N), generator=gen)
    if sym:
        zero = torch.full((groups, N), 1 << (bits - 1))
    else:
        zero = torch.randint(zero_offset, top + 1, (groups, N), generator=gen)
    # scales near 1/(2^bits) so outputs stay O(1) whatever the bit width
    scales = (torch.rand(groups, N, generator=gen) + 0.5) / (1 << bits) / K ** 0.5
    if act_order:
        order = torch.randperm(K, generator=gen)
        g_idx = torch.empty(K, dtype=torch.int32)
        g_idx[order] = (torch.arange(K) // g).to(torch.int32)
    else:
        g_idx = reference.default_g_idx(K, group_size)
    out = {"qweight": reference.pack(q, bits, dim=0),
           "qzeros": reference.pack(zero - zero_offset, bits, dim=1),
           "scales": scales.to(torch.float16),
           "g_idx": g_idx}
    if bias:
        out["bias"] = (torch.randn(N, generator=gen) * 0.1).to(torch.float16)
    return out


def build_layer(cls, tensors: dict[str, torch.Tensor], spec: LayerSpec):
    """Mirror the loader: construct on meta, assign tensors, move to the spec's device, post_init once."""
    layer = cls(spec, device="meta")
    layer.load_state_dict(tensors, assign=True)
    layer = layer.to(spec.device)
    layer.post_init()
    return layer


def assert_close_to(y: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """Tolerance scaled by the output's magnitude: fp32 tight, half types by their mantissa."""
    scale = ref.float().abs().max().item() + 1e-6
    tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(y.float(), ref.float(), atol=tol * scale, rtol=tol)


@pytest.fixture
def gptq():
    """The helpers above, for test modules (conftest is not importable by name)."""
    return SimpleNamespace(make=make_gptq_tensors, build=build_layer, assert_close=assert_close_to)
