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
              "kernels": {"kernels"}, "quantizer": {"quantizer", "backend", "kernels"}}
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


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_backend_never_imports_quantizer():
    for path in (ROOT / "backend").rglob("*.py"):
        assert "quantizer" not in imported_roots(path), f"{path.relative_to(ROOT)} imports quantizer"


def test_quantizer_imports_backend_and_kernels_but_no_front_door():
    for path in (ROOT / "quantizer").rglob("*.py"):
        bad = imported_roots(path) & {"ui", "api", "gradio", "app", "bench", "scripts", "tests"}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_qlinear_imports_point_from_init_to_backends_to_base():
    package = ROOT / "backend" / "qlinear"
    for path in package.glob("*.py"):
        own = {m for m in imported_modules(path) if m == "backend.qlinear" or m.startswith("backend.qlinear.")}
        allowed = ({f"backend.qlinear.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
                   if path.stem == "__init__" else set() if path.stem == "base" else {"backend.qlinear.base"})
        assert own <= allowed, f"{path.relative_to(ROOT)} imports {sorted(own - allowed)}"


def test_qlinear_and_quantizer_import_without_gradio():
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for d in ("backend/qlinear", "quantizer") for p in (ROOT / d).glob("*.py")
                     if p.stem != "__main__")
    code = "import sys; sys.modules['gradio'] = None\n" + "".join(f"import {m}\n" for m in modules)
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
