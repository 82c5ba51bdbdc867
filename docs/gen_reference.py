"""Generate docs/hooks.md, docs/config.md and docs/plugins.md from the code, or check that they are current.

    python docs/gen_reference.py          # rewrite both files
    python docs/gen_reference.py --check  # exit 1 if either drifted (the test suite runs this)
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rlgen import hookspecs
from rlgen.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]


def hooks_markdown() -> str:
    out = [
        "# Hook reference",
        "",
        "Generated from `core/rlgen/hookspecs.py` by `docs/gen_reference.py`; do not edit by hand.",
        "Implement a hook with `@rlgen.hookimpl` in a module registered under the `rlgen` entry point",
        "group; an implementation may accept any subset of the parameters.",
        "",
    ]
    for name, fn in hookspecs.documented_hooks().items():
        params = ", ".join(inspect.signature(fn).parameters)
        marker = getattr(fn, "rlgen_spec", {}) or {}
        first = " (first result wins)" if marker.get("firstresult") else ""
        out += [f"## `{name}({params})`{first}", "", inspect.cleandoc(fn.__doc__ or ""), ""]
    return "\n".join(out)


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("rlgen.config.", "")


def _rows(model: type[BaseModel], prefix: str, defaults: BaseModel | None = None) -> list[str]:
    rows = []
    for field_name, field in model.model_fields.items():
        key = f"{prefix}{field_name}"
        ann = field.annotation
        if defaults is not None:
            required, value = False, getattr(defaults, field_name)
        else:
            required = field.is_required()
            value = None if required else field.get_default(call_default_factory=True)
        if isinstance(ann, type) and issubclass(ann, BaseModel) and ann.model_fields:
            rows += _rows(ann, key + ".", value)
            continue
        default = "required" if required else repr(value)
        rows.append(f"| `{key}` | `{_type_name(ann)}` | `{default}` | {field.description or ''} |")
    return rows


def config_markdown() -> str:
    return "\n".join([
        "# Config reference",
        "",
        "Generated from the pydantic models in `core/rlgen/config.py` by `docs/gen_reference.py`; do not",
        "edit by hand. Each plugin's `params` are validated against that plugin's `Params` model: see",
        "`rlgen schema` for all of them, and `rlgen plugins` for what is installed.",
        "",
        "| key | type | default | meaning |",
        "| --- | --- | --- | --- |",
        *_rows(RunConfig, ""),
        "",
        "`rewards[]` entries take `name`, `weight` (default 1.0), `alias` and `params`;",
        "`callbacks[]` entries take `name` and `params`. Override any key from the command line with",
        "`--set a.b.c=value` (values are YAML; list items by index: `--set rewards.0.weight=2`).",
        "",
    ])


BUNDLED = ("rlgen-plugins", "rlgen-relate")


def plugins_markdown() -> str:
    """Every plugin of the bundled distributions with its params (from each class's ``Params``)."""
    from rlgen import registry

    reg = registry()
    out = [
        "# Plugin reference",
        "",
        "Generated from the installed bundled distributions (`rlgen-plugins`, `rlgen-relate`) by",
        "`docs/gen_reference.py`; do not edit by hand. `rlgen plugins` lists what is installed here,",
        "third-party plugins included.",
        "",
    ]
    infos = sorted((i for i in reg.infos if i.distribution in BUNDLED and i.cls is not None),
                   key=lambda i: (i.kind, i.name))
    for info in infos:
        gran = f", {info.granularity}-level" if info.granularity else ""
        out += [f"## `{info.name}` ({info.kind}{gran}, {info.distribution})", "", info.description, ""]
        if info.cls.requires:
            out += [f"Needs {', '.join(info.cls.requires)}: `{info.cls.install_hint}`.", ""]
        fields = info.cls.Params.model_fields
        if fields:
            out += ["| param | type | default | meaning |", "| --- | --- | --- | --- |"]
            for name, field in fields.items():
                default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
                text = (field.description or "").replace("|", "\\|").replace("\n", " ")
                out.append(f"| `{name}` | `{_type_name(field.annotation)}` | `{default}` | {text} |")
            out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = []
    pages = (("docs/hooks.md", hooks_markdown()), ("docs/config.md", config_markdown()),
             ("docs/plugins.md", plugins_markdown()))
    for rel, text in pages:
        path = ROOT / rel
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(rel)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python docs/gen_reference.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
