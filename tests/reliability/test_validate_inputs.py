"""`rlgen validate` catches what train would trip on, as one line naming file:line or the key, exit 2, nothing written;
`rlgen eval` and `rlgen generate` say the same about a bad --policy."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

import rlgen
from rlgen.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from run_helpers import ROOT, error_lines  # noqa: E402

EXAMPLE = ROOT / "examples" / "tiny-grpo.yaml"
ROWS = [json.loads(line) for line in (ROOT / "examples" / "data" / "ad_prompts.jsonl").read_text().splitlines()]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def refused(capsys, *args: str) -> str:
    """Run ``rlgen ARGS``, expect exit 2 and exactly one ``error:`` line; return it."""
    capsys.readouterr()
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def validate(tmp_path: Path, *sets: str) -> list[str]:
    args = ["validate", str(EXAMPLE), "--set", f"run.output_dir={tmp_path / 'out'}"]
    for s in sets:
        args += ["--set", s]
    return args


def test_every_row_is_checked_for_the_template_fields(tmp_path, capsys):
    rows = [dict(r) for r in ROWS]
    for i in (1, 4):
        del rows[i]["bid_word"]
    data = write_rows(tmp_path / "rows.jsonl", rows)
    line = refused(capsys, *validate(tmp_path, f"data.path={data}"))
    assert line.startswith(f"error: {data}: data.prompt_template uses ['bid_word'], which 2 of {len(rows)} rows lack (lines 2, 5;")
    assert not (tmp_path / "out").exists()


def test_bytes_that_are_not_utf8_are_reported_with_file_and_line(tmp_path, capsys):
    raw = write_rows(tmp_path / "rows.jsonl", ROWS).read_bytes().split(b"\n")
    raw[2] = raw[2][:10] + b"\xe9" + raw[2][10:]  # a Latin-1 e-acute in line 3
    (tmp_path / "rows.jsonl").write_bytes(b"\n".join(raw))
    line = refused(capsys, *validate(tmp_path, f"data.path={tmp_path / 'rows.jsonl'}"))
    assert line == f"error: {tmp_path / 'rows.jsonl'}:3: not UTF-8 (byte 0xe9 at column 11); re-encode the file as UTF-8"


def test_a_malformed_row_is_reported_with_file_and_line(tmp_path, capsys):
    text = write_rows(tmp_path / "rows.jsonl", ROWS).read_text().splitlines()
    text[5] = text[5][:-3]
    (tmp_path / "rows.jsonl").write_text("\n".join(text) + "\n")
    assert refused(capsys, *validate(tmp_path, f"data.path={tmp_path / 'rows.jsonl'}")).startswith(
        f"error: {tmp_path / 'rows.jsonl'}:6: not valid JSON")


@pytest.fixture
def long_prompt_data(tmp_path) -> Path:
    rows = [dict(r) for r in ROWS]
    rows[3]["query"] = "cheap flights " * 40_000  # ~0.5 MB: far past the tiny Llama's 1024 positions
    return write_rows(tmp_path / "rows.jsonl", rows)


def test_a_prompt_longer_than_the_model_context_is_refused(tmp_path, capsys, long_prompt_data):
    line = refused(capsys, *validate(tmp_path, f"data.path={long_prompt_data}"))
    assert line.startswith(f"error: {long_prompt_data}: 1 of {len(ROWS)} prompts are longer than 1000 tokens "
                           "(the model's context less the sampler's completion budget): line 4 (")
    assert line.endswith("shorten them, or set data.long_prompts to skip or truncate")


def test_data_max_prompt_tokens_bounds_prompts_too(tmp_path, capsys):
    data = write_rows(tmp_path / "rows.jsonl", ROWS)
    line = refused(capsys, *validate(tmp_path, f"data.path={data}", "data.max_prompt_tokens=30"))
    assert f"prompts are longer than 30 tokens (data.max_prompt_tokens): line" in line


def test_long_prompts_skip_drops_them_with_a_count(tmp_path, capsys, long_prompt_data):
    capsys.readouterr()
    assert main(validate(tmp_path, f"data.path={long_prompt_data}", "data.long_prompts=skip")) == 0
    out, err = capsys.readouterr()
    assert f"ok. {len(ROWS) - 1} prompts" in out
    assert "skipping long prompts" in err and "skipped=1" in err
    assert not (tmp_path / "out").exists()


def test_long_prompts_truncate_keeps_the_last_tokens(tmp_path, make_context_for_truncation):
    sampler, prompts = make_context_for_truncation
    rollout = sampler.generate(prompts, 2, seed=0)
    lengths = rollout.prompt_mask.sum(1)
    assert int(lengths.max()) == 12 and rollout.prompt_ids.shape[1] == 12
    # the end of the prompt, where the model's turn begins, is kept
    assert sampler.tokenizer.decode(rollout.prompt_ids[0][-3:]) in rollout.prompt_texts[0]


@pytest.fixture
def make_context_for_truncation(tmp_path, long_prompt_data):
    config = rlgen.load_config(EXAMPLE, [f"data.path={long_prompt_data}", "data.long_prompts=truncate",
                                         "data.max_prompt_tokens=12", f"run.output_dir={tmp_path / 'out'}"])
    from rlgen.session import prepare, run_context

    prepared = prepare(config)  # truncate: validate passes and keeps every prompt
    assert len(prepared.source.records) == len(ROWS)
    sampler = prepared.plan.sampler.build()
    sampler.setup(run_context(config, prepared.registry, tmp_path / "out"))
    yield sampler, [prepared.source.prompt(r) for r in prepared.source.records[2:5]]
    sampler.close()


def test_an_output_dir_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "out").write_text("not a folder")
    line = refused(capsys, *validate(tmp_path))
    assert line == f"error: {EXAMPLE}: run.output_dir {tmp_path / 'out'} is a file, not a folder; choose another run.output_dir"


def test_a_missing_model_path_is_refused(tmp_path, capsys):
    line = refused(capsys, *validate(tmp_path, f"model.path={tmp_path / 'nope'}"))
    assert line == f"error: {EXAMPLE}: model.path {tmp_path / 'nope'}: no such folder (a model folder, an HF model id, or builtin:NAME)"


def test_a_hub_id_that_is_not_cached_is_refused_offline(tmp_path, capsys):
    line = refused(capsys, *validate(tmp_path, "model.path=nobody/no-such-model"))
    assert line.startswith(f"error: {EXAMPLE}: model.path nobody/no-such-model: its tokenizer does not load "
                           "(it is not a local folder, and HF_HUB_OFFLINE is set")


@pytest.fixture
def policy_without_tokenizer(tmp_path, cache_dir) -> Path:
    """A run folder whose exported policy lost its tokenizer files (config.yaml beside it)."""
    from rlgen_plugins.models import resolve_builtin_model

    model = resolve_builtin_model("tiny-llama", cache_dir)
    policy = tmp_path / "run" / "policy"
    policy.mkdir(parents=True)
    for f in model.iterdir():
        if f.suffix in (".json", ".safetensors") and not f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, policy / f.name)
    config = EXAMPLE.read_text().replace("data/ad_prompts.jsonl", str(ROOT / "examples" / "data" / "ad_prompts.jsonl"))
    (tmp_path / "run" / "config.yaml").write_text(config)
    return policy


@pytest.mark.parametrize("command", ["eval", "generate"])
def test_eval_and_generate_refuse_a_missing_policy(tmp_path, capsys, command):
    out = tmp_path / ("e" if command == "eval" else "g.jsonl")
    line = refused(capsys, command, "--policy", str(tmp_path / "nope"), "--out", str(out))
    assert line == f"error: --policy {tmp_path / 'nope'} does not exist (a run's policy folder, a model folder, an HF model id, or builtin:NAME)"
    assert not out.exists()


@pytest.mark.parametrize("command", ["eval", "generate"])
def test_eval_and_generate_refuse_a_policy_without_tokenizer(tmp_path, capsys, command, policy_without_tokenizer):
    out = tmp_path / ("e" if command == "eval" else "g.jsonl")
    line = refused(capsys, command, "--policy", str(policy_without_tokenizer), "--out", str(out))
    assert line.startswith(f"error: {policy_without_tokenizer.parent / 'config.yaml'}: model.path {policy_without_tokenizer}: "
                           "the folder has no tokenizer files (tokenizer.json,")
    assert line.endswith("(model.path set by --policy)")
    assert not out.exists()


def test_validate_checks_a_policy_folder_used_as_model_path(tmp_path, capsys, policy_without_tokenizer):
    line = refused(capsys, *validate(tmp_path, f"model.path={policy_without_tokenizer}"))
    assert f"model.path {policy_without_tokenizer}: the folder has no tokenizer files" in line
