"""The core knows no model library and no plugin package, and every hook is documented."""

from __future__ import annotations

import ast
import graphlib
import inspect
import subprocess
import sys
from pathlib import Path

from rlgen import hookspecs

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"transformers", "deepspeed", "vllm", "rlgen_relate", "rlgen_plugins", "sentence_transformers", "peft"}


def test_core_source_imports_no_model_library_or_plugin_package():
    offenders = []
    for path in (ROOT / "core" / "rlgen").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_importing_the_core_loads_no_model_library():
    code = (
        "import sys, rlgen, rlgen.loop, rlgen.cli, rlgen.config, rlgen.discovery, rlgen.checkpoints; "
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r}); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_hook_is_documented_with_its_exact_signature():
    doc = (ROOT / "docs" / "hooks.md").read_text()
    for name, fn in hookspecs.documented_hooks().items():
        params = ", ".join(inspect.signature(fn).parameters)
        assert f"`{name}({params})`" in doc, f"docs/hooks.md lacks `{name}({params})`"
        assert fn.__doc__ and fn.__doc__.strip(), f"{name} has no docstring"


def test_generated_references_match_the_code():
    out = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_reference.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def _module_imports(path: Path, package: str) -> set[str]:
    """Modules of ``package`` that ``path`` imports, at module level or inside functions (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                 for stmt in node.body for n in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(f"{package}.{node.module.split('.')[0]}")
            else:
                found.update(f"{package}.{a.name}" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith(f"{package}."):
            found.add(".".join(node.module.split(".")[:2]))
    return found


def test_core_modules_import_each_other_without_a_cycle():
    graph = {f"rlgen.{p.stem}": _module_imports(p, "rlgen") for p in (ROOT / "core" / "rlgen").glob("*.py")
             if p.stem != "__init__"}
    graph = {mod: {d for d in deps if d in graph and d != mod} for mod, deps in graph.items()}
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle in core/: {' -> '.join(exc.args[1])}") from None
    assert "rlgen.cli" in order and "rlgen.session" in order


def _private_rlgen_imports(root: Path) -> list[str]:
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("rlgen."):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import ...")
            elif isinstance(node, ast.Import):
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno}: import {a.name}" for a in node.names
                              if a.name.startswith("rlgen.")]
    return offenders


def test_bundled_plugins_and_the_example_package_import_only_the_public_api():
    roots = [ROOT / "plugins" / "src", ROOT / "relate_plugins" / "src", ROOT / "examples" / "brand-voice-reward" / "src"]
    assert [o for r in roots for o in _private_rlgen_imports(r)] == []


def test_the_private_import_check_sees_a_private_import(tmp_path):
    (tmp_path / "plugin.py").write_text("import rlgen\nfrom rlgen.logs import get_logger\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert _private_rlgen_imports(tmp_path) == ["plugin.py:2: from rlgen.logs import ..."]
    finally:
        ROOT = saved


def test_every_public_name_is_documented():
    import rlgen

    doc = (ROOT / "docs" / "api.md").read_text()
    missing = [name for name in rlgen.__all__ if f"`{name}`" not in doc and f"`{name}(" not in doc]
    assert missing == [], f"docs/api.md does not document {missing}"
