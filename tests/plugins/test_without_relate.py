"""rlgen and rlgen-plugins alone train a model: a fresh environment without rlgen-relate runs the generic config.

The environment is a new venv whose third-party packages (torch, transformers, deepspeed, ...) are
this venv's, linked in one by one, leaving out every rlgen distribution; rlgen and rlgen-plugins
are then installed into it with pip (editable, no index), exactly as a user who never heard of
RELATE would have them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _fresh_venv_without_relate(tmp_path: Path) -> Path:
    site = Path(sysconfig.get_paths()["purelib"])
    shared = tmp_path / "third-party"
    shared.mkdir()
    for entry in site.iterdir():
        # every rlgen distribution and the editable-install path files that point at this checkout stay out
        if entry.name.startswith(("rlgen", "__editable__")) or entry.suffix == ".pth":
            continue
        (shared / entry.name).symlink_to(entry)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    new_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
    (new_site / "third-party.pth").write_text(f"{shared}\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    "--no-build-isolation", "-e", str(ROOT), "-e", str(ROOT / "plugins")],
                   check=True, capture_output=True, text=True)
    return venv


@pytest.mark.slow
def test_a_fresh_venv_with_only_rlgen_and_rlgen_plugins_trains_the_generic_config(tmp_path):
    venv = _fresh_venv_without_relate(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RLGEN_PLUGINS")}
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import rlgen_relate"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'rlgen_relate'" in probe.stderr
    listing = json.loads(subprocess.run([str(venv / "bin" / "rlgen"), "plugins", "--json"], env=env,
                                        capture_output=True, text=True, check=True).stdout)
    assert {m["distribution"] for m in listing["modules"]} == {"rlgen-plugins"}
    out = tmp_path / "run"
    proc = subprocess.run([str(venv / "bin" / "rlgen"), "train", str(ROOT / "examples" / "tiny-grpo-generic.yaml"),
                           "--set", f"run.output_dir={out}"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 7))
    assert {"reward/length/mean", "reward/repetition/mean", "trainer/loss"} <= set(metrics[-1])
    assert (out / "policy" / "model.safetensors").is_file()
