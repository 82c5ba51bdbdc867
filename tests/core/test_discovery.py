"""Plugin discovery through entry points, with real distributions installed by pip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN_CODE = '''
import torch, rlgen
from pydantic import Field

class Exclaim(rlgen.RewardProvider):
    name = "{name}"
    granularity = "token"
    description = "penalises every exclamation mark"

    class Params(rlgen.Params):
        penalty: float = Field(1.0, description="per token")

    def score(self, rollout):
        spans = [[(i, i + 1) for i, ch in enumerate(t) if ch == "!"] for t in rollout.texts]
        return rlgen.RewardResult(-self.params.penalty * rollout.spans_to_tokens(spans).float())

@rlgen.hookimpl
def rlgen_reward_providers():
    return [Exclaim]
'''


def make_distribution(root: Path, dist: str, module: str, plugin_name: str, body: str | None = None) -> Path:
    src = root / dist
    (src / module).mkdir(parents=True)
    (src / module / "__init__.py").write_text(body if body is not None else PLUGIN_CODE.format(name=plugin_name))
    (src / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "1.2.3"
        dependencies = ["rlgen"]

        [project.entry-points.rlgen]
        {module} = "{module}"

        [tool.setuptools]
        packages = ["{module}"]
    """))
    return src


def pip_install(src: Path, target: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(src)],
        check=True, capture_output=True, text=True,
    )


def rlgen_cli(*args: str, path: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    if path is not None:
        e["PYTHONPATH"] = os.pathsep.join([str(path), e.get("PYTHONPATH", "")])
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "rlgen.cli", *args], capture_output=True, text=True, env=e)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dists")
    target = root / "site"
    pip_install(make_distribution(root, "acme-rewards", "acme_rewards", "acme.exclaim"), target)
    return target


def test_a_pip_installed_distribution_is_discovered_through_its_entry_point(installed):
    out = rlgen_cli("plugins", "--json", path=installed)
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    [info] = [p for p in listing["plugins"] if p["name"] == "acme.exclaim"]
    assert info == {
        "kind": "reward", "name": "acme.exclaim", "description": "penalises every exclamation mark",
        "distribution": "acme-rewards", "version": "1.2.3", "module": "acme_rewards", "granularity": "token", "aliases": [],
        "status": "ok", "error": None,
    }
    # not importable without the install: discovery really came from the entry point
    assert not any(p["name"] == "acme.exclaim" for p in json.loads(rlgen_cli("plugins", "--json").stdout)["plugins"])


def test_block_and_disable_autoload(installed):
    blocked = json.loads(rlgen_cli("plugins", "--json", path=installed,
                                   env={"RLGEN_BLOCK_PLUGINS": "acme_rewards"}).stdout)
    [mod] = [m for m in blocked["modules"] if m["name"] == "acme_rewards"]
    assert mod["status"] == "blocked"
    assert not any(p["name"] == "acme.exclaim" for p in blocked["plugins"])
    by_name = json.loads(rlgen_cli("plugins", "--json", path=installed,
                                   env={"RLGEN_BLOCK_PLUGINS": "acme.exclaim"}).stdout)
    [info] = [p for p in by_name["plugins"] if p["name"] == "acme.exclaim"]
    assert info["status"] == "blocked"
    none = json.loads(rlgen_cli("plugins", "--json", path=installed,
                                env={"RLGEN_DISABLE_PLUGIN_AUTOLOAD": "1"}).stdout)
    assert none == {"plugins": [], "modules": []}


def test_broken_module_is_listed_and_duplicate_names_name_both_distributions(tmp_path, installed):
    target = tmp_path / "site"
    pip_install(make_distribution(tmp_path, "broken-rewards", "broken_rewards", "x", body="import no_such_module\n"),
                target)
    pip_install(make_distribution(tmp_path, "copycat-rewards", "copycat_rewards", "acme.exclaim"), target)
    out = rlgen_cli("plugins", "--json", path=Path(f"{target}{os.pathsep}{installed}"))
    listing = json.loads(out.stdout)
    [broken] = [m for m in listing["modules"] if m["name"] == "broken_rewards"]
    assert broken["status"] == "error" and "No module named 'no_such_module'" in broken["error"]
    dup = [p for p in listing["plugins"] if p["name"] == "acme.exclaim" and p["status"] == "error"]
    assert len(dup) == 1
    assert "acme-rewards 1.2.3" in dup[0]["error"] and "copycat-rewards 1.2.3" in dup[0]["error"]
    assert out.returncode == 1
    text = rlgen_cli("plugins", path=Path(f"{target}{os.pathsep}{installed}"))
    assert "broken_rewards" in text.stderr and "No module named 'no_such_module'" in text.stderr


def test_a_misspelt_hookimpl_is_a_listed_module_error_naming_the_function(tmp_path, installed):
    target = tmp_path / "site"
    typo = PLUGIN_CODE.format(name="typo.exclaim").replace("def rlgen_reward_providers", "def rlgen_reward_provider")
    pip_install(make_distribution(tmp_path, "typo-rewards", "typo_rewards", "typo.exclaim", body=typo), target)
    path = Path(f"{target}{os.pathsep}{installed}")
    listing = json.loads(rlgen_cli("plugins", "--json", path=path).stdout)
    [mod] = [m for m in listing["modules"] if m["name"] == "typo_rewards"]
    assert mod["status"] == "error"
    assert "typo_rewards" in mod["error"] and "rlgen_reward_provider()" in mod["error"]
    assert "did you mean rlgen_reward_providers?" in mod["error"]
    # the module is rejected whole, and the listing says so on stderr
    assert not any(p["name"] == "typo.exclaim" for p in listing["plugins"])
    assert "rlgen_reward_provider()" in rlgen_cli("plugins", path=path).stderr


def test_a_plugin_is_found_by_its_aliases_and_an_alias_cannot_be_claimed_twice():
    import types

    import rlgen

    def module(name: str, cls: type) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.rlgen_advantage_combiners = rlgen.hookimpl(lambda: [cls])
        mod.rlgen_advantage_combiners.__name__ = "rlgen_advantage_combiners"
        return mod

    class Renamed(rlgen.AdvantageCombiner):
        name, aliases = "new.name", ("old.name",)

        def combine(self, rollout, rewards, weights):
            raise NotImplementedError

    class Squatter(Renamed):
        name, aliases = "squatter", ("old.name",)

    reg = rlgen.registry([module("renamed_mod", Renamed)], autoload=False)
    assert reg.get("advantage", "old.name") is Renamed and reg.get("advantage", "new.name") is Renamed
    [info] = reg.infos
    assert info.aliases == ("old.name",) and info.as_dict()["aliases"] == ["old.name"]
    clash = rlgen.registry([module("renamed_mod", Renamed), module("squat_mod", Squatter)], autoload=False)
    with pytest.raises(rlgen.PluginError, match="two plugins claim the advantage name 'old.name'"):
        clash.check()
