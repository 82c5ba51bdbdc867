"""The core knows no model library and no plugin package, and every hook is documented."""

from __future__ import annotations

import ast
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
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_reference.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
