"""Without vllm installed, the ``vllm`` sampler is listed as unavailable and a config selecting it fails validation.

Runs in the main environment, which deliberately has no vllm (it lives in ``.venv-vllm``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rlgen.cli import main as cli
from rlgen.config import config_schema, load_config, plan_run
from rlgen.errors import ConfigError
from rlgen_plugins.samplers.vllm import INSTALL_HINT, VLLMSampler

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")

CONFIG = {
    "model": {"path": "builtin:tiny-llama"},
    "data": {"path": "prompts.jsonl", "prompt_template": "Write an ad for {query}"},
    "sampler": {"name": "vllm", "params": {"max_new_tokens": 8}},
    "rewards": [{"name": "relate.length"}],
}


def test_listed_unavailable_with_the_install_command(registry, capsys) -> None:
    info = next(i for i in registry.infos if i.kind == "sampler" and i.name == "vllm")
    assert info.status == "unavailable" and info.cls is VLLMSampler
    assert info.error == f"needs vllm, which is not installed; install with: {INSTALL_HINT}"
    assert "pip install 'rlgen-plugins[vllm]'" in INSTALL_HINT
    # its params are still documented in the config schema
    assert "mode" in config_schema(registry)["x-rlgen-plugin-params"]["sampler:vllm"]["properties"]
    assert cli(["plugins"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("sampler") and " vllm " in line)
    assert "unavailable: needs vllm" in row and "pip install 'rlgen-plugins[vllm]'" in row


def test_a_config_selecting_it_fails_validation_with_that_message(registry, tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError, match=r"sampler\.name: sampler plugin 'vllm' is unavailable: needs vllm") as err:
        plan_run(load_config(CONFIG), registry)
    assert INSTALL_HINT in str(err.value)
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"query": "shoes"}) + "\n")
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({**CONFIG, "data": {**CONFIG["data"], "path": str(data)}}))
    assert cli(["validate", str(config)]) == 2
    assert "sampler plugin 'vllm' is unavailable" in capsys.readouterr().err
