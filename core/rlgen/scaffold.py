"""`rlgen new-plugin`: write a ready-to-install plugin distribution from a template.

A third party should get from nothing to a discoverable, tested plugin in one command. The
templates (``rlgen/templates/``, shipped as package data) are small but working plugins of
each kind; this module only validates the name, fills the placeholders and writes the files.
Placeholders use :class:`string.Template` (``$name``), which no template's Python code needs.
"""

from __future__ import annotations

import importlib.util
import keyword
import re
import string
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import RlgenError

#: PEP 508 / packaging: a distribution name (letters, digits, ``-_.``, alphanumeric at both ends)
_DIST_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
#: import names a generated package must never shadow
_RESERVED = {"rlgen", "rlgen_plugins", "rlgen_relate", "test", "tests", "src"}


@dataclass(frozen=True)
class KindTemplate:
    """What one plugin kind's skeleton contains."""

    suffix: str  # second half of the plugin name: <namespace>.<suffix>
    class_name: str
    summary: str  # one line, the plugin's description
    dependencies: tuple[str, ...]
    #: generated path (placeholders allowed) -> template file under rlgen/templates
    files: tuple[tuple[str, str], ...]


_COMMON: tuple[tuple[str, str], ...] = (
    ("pyproject.toml", "common/pyproject.toml.tmpl"),
    ("README.md", "common/README.md.tmpl"),
    ("src/$package/__init__.py", "common/__init__.py.tmpl"),
)

KINDS: dict[str, KindTemplate] = {
    "reward": KindTemplate(
        suffix="repeated_words",
        class_name="RepeatedWordsReward",
        summary="token-level: penalises every token of a word the completion already used",
        dependencies=("torch",),
        files=(
            ("src/$package/plugin.py", "reward/plugin.py.tmpl"),
            ("tests/conftest.py", "common/conftest_tokenizer.py.tmpl"),
            ("tests/test_plugin.py", "reward/test_plugin.py.tmpl"),
        ),
    ),
    "advantage": KindTemplate(
        suffix="group_baseline",
        class_name="GroupBaselineAdvantage",
        summary="weighted rewards minus their group mean (optionally / group std), token rewards kept on their tokens",
        dependencies=("torch",),
        files=(
            ("src/$package/plugin.py", "advantage/plugin.py.tmpl"),
            ("tests/conftest.py", "common/conftest_tokenizer.py.tmpl"),
            ("tests/test_plugin.py", "advantage/test_plugin.py.tmpl"),
        ),
    ),
    "sampler": KindTemplate(
        suffix="table",
        class_name="TableSampler",
        summary="samples word sequences from a position-by-word logits table synced from the trainer",
        dependencies=("torch",),
        files=(
            ("src/$package/policy.py", "table/policy.py.tmpl"),
            ("src/$package/plugin.py", "sampler/plugin.py.tmpl"),
            ("tests/conftest.py", "common/conftest.py.tmpl"),
            ("tests/test_plugin.py", "sampler/test_plugin.py.tmpl"),
        ),
    ),
    "trainer": KindTemplate(
        suffix="table_pg",
        class_name="TablePolicyGradientTrainer",
        summary="policy gradient on a position-by-word logits table, checkpointed with safetensors",
        dependencies=("torch", "safetensors>=0.4"),
        files=(
            ("src/$package/policy.py", "table/policy.py.tmpl"),
            ("src/$package/plugin.py", "trainer/plugin.py.tmpl"),
            ("tests/conftest.py", "common/conftest.py.tmpl"),
            ("tests/test_plugin.py", "trainer/test_plugin.py.tmpl"),
        ),
    ),
}


@dataclass(frozen=True)
class PluginNames:
    """Every name derived from the NAME given on the command line."""

    distribution: str  # acme-rewards
    package: str  # acme_rewards
    namespace: str  # acme_rewards (``rlgen_`` prefix dropped)
    plugin: str  # acme_rewards.repeated_words


def derive_names(name: str, kind: str) -> PluginNames:
    """Validate ``name`` as a distribution name and derive the import and plugin names.

    Raises RlgenError with the reason when the name cannot be a distribution, cannot be an
    import name, or would shadow an existing module.
    """
    if kind not in KINDS:
        raise RlgenError(f"unknown plugin kind {kind!r}; use one of {', '.join(KINDS)}")
    if not _DIST_NAME.match(name):
        raise RlgenError(
            f"'{name}' is not a valid distribution name: use letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit (e.g. acme-rewards)"
        )
    package = re.sub(r"[-_.]+", "_", name).lower()
    if not package.isidentifier():
        raise RlgenError(
            f"'{name}' gives the import name '{package}', which is not a Python identifier; "
            "start the name with a letter (e.g. acme-rewards)"
        )
    if keyword.iskeyword(package):
        raise RlgenError(f"'{name}' gives the import name '{package}', which is a Python keyword; choose another name")
    if package in _RESERVED or package in sys.stdlib_module_names:
        raise RlgenError(f"'{name}' gives the import name '{package}', which would shadow an existing module; choose another name")
    if importlib.util.find_spec(package) is not None:
        raise RlgenError(
            f"'{name}' gives the import name '{package}', which an installed package already uses; choose another name"
        )
    namespace = package[len("rlgen_"):] if package.startswith("rlgen_") and len(package) > len("rlgen_") else package
    return PluginNames(name, package, namespace, f"{namespace}.{KINDS[kind].suffix}")


def _template_text(rel: str) -> str:
    return resources.files("rlgen").joinpath("templates", *rel.split("/")).read_text(encoding="utf-8")


def render(kind: str, names: PluginNames) -> dict[str, str]:
    """The generated files: relative path -> text."""
    from . import __version__

    spec = KINDS[kind]
    values = {
        "distribution": names.distribution,
        "package": names.package,
        "plugin_name": names.plugin,
        "class_name": spec.class_name,
        "kind": kind,
        "summary": spec.summary,
        "rlgen_version": __version__,
        "dependencies": "".join(f'    "{d}",\n' for d in ("rlgen>=" + __version__, "pydantic>=2.7", *spec.dependencies)),
        "kind_readme": _template_text(f"{kind}/README.section.md.tmpl"),
    }
    # the README section holds placeholders too: fill it first
    values["kind_readme"] = string.Template(values["kind_readme"]).substitute(values)
    files: dict[str, str] = {}
    for target, source in _COMMON + spec.files:
        path = string.Template(target).substitute(values)
        files[path] = string.Template(_template_text(source)).substitute(values)
    return files


def new_plugin(name: str, kind: str = "reward", directory: str | Path = ".") -> Path:
    """Write the skeleton of plugin distribution ``name`` into ``directory/name``; return that folder.

    The folder must not exist yet. Nothing is written when validation fails.
    """
    names = derive_names(name, kind)
    parent = Path(directory)
    if parent.exists() and not parent.is_dir():
        raise RlgenError(f"--dir {parent} is not a folder")
    root = parent / name
    if root.exists():
        raise RlgenError(f"{root} already exists; choose another --dir or name")
    files = render(kind, names)
    try:
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise RlgenError(f"cannot write the plugin package to {root}: {exc}") from exc
    return root
