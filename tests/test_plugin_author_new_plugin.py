"""`rlgen new-plugin`: every kind's skeleton installs, is discovered, passes its own tests, and runs.

The generated packages are built and pip-installed into a temporary target (entry points and
all), exactly as a plugin author's `pip install` would, and then used only through the CLI and
their own test suites in subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from rlgen.cli import main
from rlgen.errors import RlgenError
from rlgen.scaffold import KINDS, derive_names, new_plugin

ROOT = Path(__file__).resolve().parents[1]

#: distribution name per kind; the sampler and trainer share the table-policy layout
PACKAGES = {
    "reward": "acme-rewards",
    "advantage": "acme-baseline",
    "sampler": "rlgen-acme-sampler",
    "trainer": "acme_trainer",
}
PLUGIN_NAMES = {
    "reward": "acme_rewards.repeated_words",
    "advantage": "acme_baseline.group_baseline",
    "sampler": "acme_sampler.table",  # the rlgen_ prefix is dropped from the namespace
    "trainer": "acme_trainer.table_pg",
}


def rlgen_cli(*args: str, site: Path | None = None, cwd: Path | None = None, timeout: int = 300):
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "rlgen.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, Path]:
    """(folder holding the four generated packages, pip target they are installed into)."""
    root = tmp_path_factory.mktemp("authors")
    # one through the real command line, the others in process (each CLI start imports torch)
    out = rlgen_cli("new-plugin", PACKAGES["reward"], "--dir", str(root))
    assert out.returncode == 0, out.stderr
    assert "wrote the reward plugin package" in out.stdout
    for kind, dist in PACKAGES.items():
        if kind != "reward":
            assert new_plugin(dist, kind, root) == root / dist
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(site), *(str(root / d) for d in PACKAGES.values())],
        check=True, capture_output=True, text=True,
    )
    return root, site


def test_the_skeleton_has_an_entry_point_a_params_model_a_readme_and_a_test(generated):
    root, _ = generated
    for kind, dist in PACKAGES.items():
        pkg = root / dist
        project = tomllib.loads((pkg / "pyproject.toml").read_text())
        package = dist.replace("-", "_").lower()
        assert project["project"]["name"] == dist
        assert project["project"]["entry-points"]["rlgen"] == {package: f"{package}.plugin"}
        assert project["tool"]["setuptools"]["packages"]["find"]["where"] == ["src"]
        code = (pkg / "src" / package / "plugin.py").read_text()
        assert "class Params(rlgen.Params)" in code and "@rlgen.hookimpl" in code
        assert f'name = "{PLUGIN_NAMES[kind]}"' in code
        assert "description=" in code  # every Params field is documented
        readme = (pkg / "README.md").read_text()
        assert PLUGIN_NAMES[kind] in readme and "pip install -e" in readme and "twine upload" in readme
        assert "def test_" in (pkg / "tests" / "test_plugin.py").read_text()
        for path in pkg.rglob("*"):  # every placeholder was filled
            if path.is_file():
                assert "$" not in path.read_text(), path


def test_rlgen_plugins_lists_every_installed_skeleton(generated):
    _, site = generated
    out = rlgen_cli("plugins", "--json", site=site)
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)["plugins"]
    for kind, dist in PACKAGES.items():
        [info] = [p for p in listing if p["name"] == PLUGIN_NAMES[kind]]
        assert (info["kind"], info["distribution"], info["version"], info["status"]) == (kind, dist, "0.1.0", "ok")
        assert info["description"]
    [reward] = [p for p in listing if p["name"] == PLUGIN_NAMES["reward"]]
    assert reward["granularity"] == "token"


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(PACKAGES))
def test_the_generated_tests_pass_as_generated(generated, kind):
    root, site = generated
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=root / PACKAGES[kind],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert " passed" in out.stdout and "failed" not in out.stdout and "skipped" not in out.stdout


@pytest.mark.slow
def test_the_four_skeletons_train_together_in_a_real_run(generated, tmp_path):
    """Generated sampler + trainer + reward + combiner through `rlgen train`: repeats go down."""
    _, site = generated
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"query": q}) + "\n" for q in ("coffee", "beans", "mugs", "tea")))
    config = {
        "model": {"path": "unused"},
        "data": {"path": str(data), "prompt_template": "Write an ad for {query}", "prompts_per_step": 4},
        "group_size": 8,
        "sampler": {"name": PLUGIN_NAMES["sampler"], "params": {"max_new_tokens": 8}},
        "rewards": [{"name": PLUGIN_NAMES["reward"], "weight": 1.0, "params": {"min_length": 1}}],
        "advantage": {"name": PLUGIN_NAMES["advantage"], "params": {"token_rewards": "keep"}},
        "trainer": {"name": PLUGIN_NAMES["trainer"], "params": {"max_len": 8, "lr": 0.3}},
        "run": {"steps": 40, "seed": 0, "output_dir": str(tmp_path / "run")},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    out = rlgen_cli("train", str(tmp_path / "run.yaml"), site=site)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 40
    key = f"reward/{PLUGIN_NAMES['reward']}/mean"
    first = sum(m[key] for m in metrics[:8]) / 8
    last = sum(m[key] for m in metrics[-8:]) / 8
    assert last > first + 0.5, (first, last)  # the penalty for repeated words shrinks
    assert "advantage/zero_var_group_frac" in metrics[-1] and "trainer/loss" in metrics[-1]
    assert (tmp_path / "run" / "policy" / "model.safetensors").exists()


# -- names and failures (in process) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bad name", "not a valid distribution name"),
        ("-acme", "not a valid distribution name"),
        ("acme-", "not a valid distribution name"),
        ("9lives", "not a Python identifier"),
        ("class", "is a Python keyword"),
        ("json", "would shadow an existing module"),
        ("rlgen", "would shadow an existing module"),
        ("rlgen-relate", "would shadow an existing module"),
        ("pydantic", "an installed package already uses"),
    ],
)
def test_invalid_names_are_one_clear_error_and_write_nothing(tmp_path, name, message):
    with pytest.raises(RlgenError, match=message):
        new_plugin(name, "reward", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cli_errors_exit_2_with_one_message(tmp_path, capsys):
    (tmp_path / "acme-rewards").mkdir()
    assert main(["new-plugin", "acme-rewards", "--dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'acme-rewards'} already exists; choose another --dir or name\n"
    assert main(["new-plugin", "acme rewards", "--dir", str(tmp_path)]) == 2
    assert "not a valid distribution name" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["new-plugin", "acme-x", "--dir", str(tmp_path / "file")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: unknown kind
        main(["new-plugin", "acme-x", "--kind", "logger", "--dir", str(tmp_path)])
    assert exc.value.code == 2 and "invalid choice: 'logger'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acme-rewards", "file"]


def test_derived_names():
    names = derive_names("Rlgen-Brand.Voice", "advantage")
    assert (names.package, names.namespace, names.plugin) == (
        "rlgen_brand_voice", "brand_voice", "brand_voice.group_baseline")
    assert set(KINDS) == {"reward", "advantage", "sampler", "trainer"}


def test_the_templates_ship_in_the_rlgen_wheel(tmp_path):
    """Package data: a non-editable install of rlgen must carry every template."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "core" / "rlgen", src / "core" / "rlgen", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp_path / "wheel"), str(src)], check=True, capture_output=True, text=True)
    [wheel] = (tmp_path / "wheel").glob("rlgen-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("rlgen/templates/")}
    expected = {f"rlgen/{p.relative_to(ROOT / 'core' / 'rlgen').as_posix()}"
                for p in (ROOT / "core" / "rlgen" / "templates").rglob("*.tmpl")}
    assert expected and shipped == expected
