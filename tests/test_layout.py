"""The layering rule: app → ui | api → backend → kernels; api and backend without gradio, kernels with only torch
and triton."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names)
# which of our top-level packages each one may import (itself included); app.py sits above them all
MAY_IMPORT = {"ui": {"ui", "backend"}, "api": {"api", "backend"}, "backend": {"backend", "kernels"},
              "kernels": {"kernels"}}
OURS = set(MAY_IMPORT) | {"app"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_kernels_import_only_torch_and_triton():
    for path in (ROOT / "kernels").rglob("*.py"):
        extra = imported_roots(path) - STDLIB - {"torch", "triton", "kernels", "__future__"}
        assert not extra, f"{path.relative_to(ROOT)} imports {sorted(extra)}"


def test_backend_never_imports_ui_or_gradio():
    for path in (ROOT / "backend").rglob("*.py"):
        bad = imported_roots(path) & {"ui", "gradio", "app"}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_backend_and_kernels_import_without_gradio():
    modules = sorted(f"{p.parent.name}.{p.stem}" for d in ("backend", "kernels") for p in (ROOT / d).glob("*.py")
                     if p.stem != "__init__")
    code = ("import sys; sys.modules['gradio'] = None\n"
            + "".join(f"import {m}\n" for m in modules))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_imports_point_down():
    for package, allowed in MAY_IMPORT.items():
        for path in (ROOT / package).rglob("*.py"):
            bad = imported_roots(path) & OURS - allowed
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}; {package}/ may import {sorted(allowed)}"


def test_api_never_imports_gradio_or_ui():
    for path in (ROOT / "api").rglob("*.py"):
        bad = imported_roots(path) & {"gradio", "ui", "app"}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_api_imports_without_gradio_or_ui():
    modules = sorted(f"api.{p.stem}" for p in (ROOT / "api").glob("*.py") if p.stem != "__init__")
    code = ("import sys; sys.modules['gradio'] = None; sys.modules['ui'] = None\n"
            + "".join(f"import {m}\n" for m in ["api", *modules]))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
