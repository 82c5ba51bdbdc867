"""The third-party example `examples/brand-voice-reward`, used exactly as a user would.

It is built and pip-installed (from a copy, so the checkout stays clean) into a temporary
target; then its own test suite runs against the installed distribution, `rlgen plugins`
lists its rewards, and a short training run on `builtin:tiny-llama` (hf sampler, relate.grpo
trainer, relate.credit combiner) uses both rewards by name beside `relate.length` (issue 8,
"Done when").
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "brand-voice-reward"
WORD = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*")
VOCABULARY = ["fresh", "new", "coffee", "shoes", "tea", "hotel", "the", "a", "and", "for", "with", "your"]


def env_with(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(a clean copy of the example, the pip target it is installed into)."""
    root = tmp_path_factory.mktemp("brand")
    copy = root / "brand-voice-reward"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "runs",
                                                                  ".pytest_cache"))
    site = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(site), str(copy)], check=True, capture_output=True, text=True)
    return copy, site


def test_the_example_passes_its_own_tests_against_the_installed_distribution(installed):
    copy, site = installed
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=copy,
                         capture_output=True, text=True, env=env_with(site), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"\b(\d+) passed\b", out.stdout) and "failed" not in out.stdout and "skipped" not in out.stdout


def test_rlgen_plugins_lists_both_rewards_from_the_distribution(installed):
    _, site = installed
    out = subprocess.run([sys.executable, "-m", "rlgen.cli", "plugins", "--json"], capture_output=True, text=True,
                         env=env_with(site), timeout=300)
    assert out.returncode == 0, out.stderr
    found = {p["name"]: p for p in json.loads(out.stdout)["plugins"] if p["distribution"] == "rlgen-brand-voice"}
    assert set(found) == {"brand.off_vocabulary", "brand.required_mention"}
    assert found["brand.off_vocabulary"]["granularity"] == "token"
    assert found["brand.required_mention"]["granularity"] == "sentence"
    assert all(p["status"] == "ok" and p["version"] == "0.1.0" for p in found.values())


def test_a_tiny_llama_run_uses_both_rewards_beside_relate_length(installed, tmp_path):
    copy, site = installed
    out_dir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "rlgen.cli", "train", str(copy / "brand-run.yaml"),
        "--set", "run.steps=3", "--set", f"run.output_dir={out_dir}",
        # an approved vocabulary on top of the banned list, so that the random tiny model's words are judged
        "--set", f"rewards.1.params.vocabulary={json.dumps(VOCABULARY)}",
        "--set", "callbacks=[{name: samples, params: {every: 1, show: 0}}]",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env_with(site), timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    config = yaml.safe_load((out_dir / "config.yaml").read_text())
    assert (config["model"]["path"], config["sampler"]["name"], config["trainer"]["name"]) == (
        "builtin:tiny-llama", "hf", "grpo")
    assert [r["name"] for r in config["rewards"]] == ["relate.length", "brand.off_vocabulary", "brand.required_mention"]

    metrics = [json.loads(ln) for ln in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        for key in ("reward/relate.length/mean", "reward/brand.off_vocabulary/mean",
                    "reward/brand.off_vocabulary/off_vocabulary_per_sample", "reward/brand.off_vocabulary/banned_per_sample",
                    "reward/brand.required_mention/mean", "reward/brand.required_mention/mention_rate", "trainer/loss"):
            assert key in m, key
        assert m["reward/brand.required_mention/mean"] == pytest.approx(m["reward/brand.required_mention/mention_rate"])
    assert min(m["reward/brand.off_vocabulary/mean"] for m in metrics) < 0  # the policy's words were judged

    # every logged completion was scored as the rewards document it (real tokenizer, real offsets)
    samples = [json.loads(ln) for ln in (out_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * 2 * 4
    approved = {w.casefold() for w in VOCABULARY}
    for s in samples:
        text, brand = s["text"], s["meta"]["brand"]
        prompt_words = {w.casefold() for w in WORD.findall(s["prompt"] + " " + " ".join(s["meta"].values()))}
        flagged = s["details"]["brand.off_vocabulary"]
        off = [w.casefold() for w in WORD.findall(text) if w.casefold() not in approved | prompt_words]
        assert [w.casefold() for w in flagged["off_vocabulary"]] == [w for w in off if w not in
                                                                     {b.casefold() for b in flagged["banned"]}]
        score = s["rewards"]["brand.off_vocabulary"]
        assert (score < 0) == bool(flagged["off_vocabulary"] or flagged["banned"]), s
        # each flagged word costs at least one token's penalty
        assert score <= -0.2 * len(flagged["off_vocabulary"]) + 1e-6
        mentioned = re.search(rf"(?<!\w){re.escape(brand)}(?!\w)", text, re.IGNORECASE) is not None
        assert s["rewards"]["brand.required_mention"] == (1.0 if mentioned else 0.0)
