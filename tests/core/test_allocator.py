"""run.reuse_freed_memory: a step's large buffers come back without page faults, and the loop turns it on.

malloc settings are process-wide and cannot be undone, so each case runs in a fresh interpreter."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")

REPO = Path(__file__).resolve().parents[2]

# what a step does to its large buffers, five times over: allocate and touch 128 + 32 MiB, free them; the share
# of their pages faulted in afresh per round
REALLOCATE = """
import json, resource, sys, torch
from rlgen.allocator import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "on" else False
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(32 * 2**20); del x
before = faults()
for _ in range(5):
    x, y = torch.ones(32 * 2**20), torch.ones(8 * 2**20)
    del x, y
print(json.dumps({"applied": applied, "refaulted": (faults() - before) / 5 / (160 * 2**20 // 4096)}))
"""


def run_python(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_freed_buffer_is_reused_without_faulting_its_pages_again():
    off = run_python(REALLOCATE, "off")
    on = run_python(REALLOCATE, "on")
    assert off["refaulted"] > 0.9  # glibc unmapped the blocks: every page is faulted in afresh (measured 1.00)
    assert on["applied"] and on["refaulted"] < 0.4  # measured 0.08-0.16


LOOP = """
import json, sys
sys.path.insert(0, ".")
from pathlib import Path
import rlgen
from rlgen import allocator
from rlgen.config import load_config
from rlgen.loop import train
from tests.core import toy_plugins
from tests.core.test_loop import make_config
config = make_config(Path(sys.argv[1]), steps=2, reuse_freed_memory=sys.argv[2] == "on")
train(load_config(config), registry=rlgen.registry(plugins=[toy_plugins], autoload=False), progress=False)
print(json.dumps({"applied": allocator._applied}))
"""


@pytest.mark.parametrize("setting", ["on", "off"])
def test_the_run_loop_applies_the_setting(tmp_path, setting):
    assert run_python(LOOP, str(tmp_path), setting)["applied"] == (setting == "on")
