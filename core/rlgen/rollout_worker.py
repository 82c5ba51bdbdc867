"""The sampler in a process of its own, so that generation overlaps training (``run.async_rollouts: 1``).

torch runs a process's ops on that process's thread pool, and the Python around small decode
ops holds one interpreter lock per process: a sampler thread beside the trainer would mostly
wait for it. A second process with its own model copy and its own threads generates on another
core while the trainer updates. The trainer's weights reach it through shared memory (one copy
per publish, the buffers handed over once), requests and rollouts through a pipe.

The worker builds the configured sampler plugin class itself and sets it up with the run's
context; from the sampler's side nothing changes: ``sync_weights`` gets a trainer whose
``export_weights`` reads the shared buffers (the path a sampler takes for a trainer in another
process), and ``generate`` is called with the step's prompts and seed as the loop would.
Started with ``spawn``, so a script that trains must guard its entry point with
``if __name__ == "__main__":``, as for any multiprocessing program.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.multiprocessing as mp

from .allocator import reuse_freed_memory
from .errors import PluginError
from .interfaces import Prompt, RunContext, Sampler, Trainer
from .rollout import Rollout

#: how long ``close`` waits for the worker to finish on its own before terminating it
_CLOSE_TIMEOUT_S = 30.0


class PublishedWeights(Trainer):
    """Worker side: the trainer's weights as last published into shared memory, offered the way an
    out-of-process trainer offers them (``export_weights``; no live module to share)."""

    name = "published-weights"
    description = "the trainer's weights as published to the sampler process"

    def __init__(self, tensors: dict[str, torch.Tensor], trainer_name: str) -> None:
        super().__init__()
        self.tensors = tensors
        self.name = trainer_name  # errors of the sampler name the real trainer

    def step(self, rollout: Rollout, advantages: torch.Tensor) -> dict[str, float]:
        raise PluginError("the sampler process holds the trainer's weights only; it cannot train")

    def export_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from self.tensors.items()


@dataclass
class WorkerSpec:
    """What the worker needs to build and set up the sampler exactly as the main process would."""

    sampler_cls: type[Sampler]
    sampler_params: Any  # the validated Params model
    config: dict[str, Any]
    output_dir: str
    cache_dir: str
    seed: int
    threads: int


def _serve(conn: Any, spec: WorkerSpec) -> None:
    """The worker's loop: one reply per request, errors included, until ``close`` or a closed pipe."""
    from .config import RunConfig
    from .discovery import registry as discover
    from .seeding import seed_everything

    torch.set_num_threads(spec.threads)
    sampler: Sampler | None = None
    weights: PublishedWeights | None = None
    try:
        config = RunConfig.model_validate(spec.config)
        if config.run.reuse_freed_memory:
            reuse_freed_memory()
        context = RunContext(config=config, registry=discover(), output_dir=Path(spec.output_dir),
                             cache_dir=Path(spec.cache_dir), seed=spec.seed, rank=0, world_size=1, threads=spec.threads)
        sampler = spec.sampler_cls(spec.sampler_params)
        sampler.setup(context)
        conn.send(("ready",))
    except BaseException as exc:
        conn.send(("error", "setup", _summary(exc), traceback.format_exc()))
        return
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            break
        kind = request[0]
        if kind == "close":
            break
        try:
            if kind == "weights":
                weights = PublishedWeights(request[1], request[2])
                conn.send(("ok",))
            elif kind == "generate":
                _, step, prompts, group_size, seed, sync = request
                sync_metrics = (sampler.sync_weights(weights) or {}) if sync else {}
                seed_everything(seed)
                t0 = time.perf_counter()
                rollout = sampler.generate(prompts, group_size, seed)
                conn.send(("rollout", step, rollout, dict(sync_metrics), time.perf_counter() - t0))
            elif kind == "state_dict":
                conn.send(("state", sampler.state_dict()))
            elif kind == "load_state_dict":
                sampler.load_state_dict(request[1])
                conn.send(("ok",))
            else:
                conn.send(("error", kind, f"unknown request {kind!r}", ""))
        except KeyboardInterrupt:
            break
        except BaseException as exc:
            conn.send(("error", kind, _summary(exc), traceback.format_exc()))
    sampler.close()


def _summary(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}{': ' + first if first else ''}"


class SamplerWorkerError(RuntimeError):
    """An exception the sampler raised in the worker process; the message carries its traceback."""


class SamplerWorker:
    """Main side: starts the worker, publishes weights, sends requests, receives rollouts in order."""

    def __init__(self, spec: WorkerSpec, sampler_name: str) -> None:
        self.sampler_name = sampler_name
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(child, spec), name=f"rlgen-sampler-{sampler_name}", daemon=True)
        self._process.start()
        child.close()  # the worker's end lives in the worker only, so its death reads as EOF here
        self._started = False
        self._buffers: dict[str, torch.Tensor] | None = None
        self._in_flight: int | None = None
        self._ready: dict[int, tuple[Rollout, dict[str, float], float]] = {}

    # -- plumbing -------------------------------------------------------------------------

    def _receive(self) -> tuple:
        try:
            reply = self._conn.recv()
        except (EOFError, OSError):
            self._process.join(timeout=5)
            raise PluginError(
                f"sampler '{self.sampler_name}': its process (run.async_rollouts: 1) died "
                f"(exit code {self._process.exitcode})"
            ) from None
        if reply[0] == "error":
            _, hook, summary, trace = reply
            raise SamplerWorkerError(f"{summary} (in the sampler process, during {hook})\n{trace}")
        return reply

    def wait_ready(self) -> None:
        """Block until the worker has set the sampler up; raises what its setup raised."""
        if not self._started:
            self._receive()
            self._started = True

    def _call(self, *request: Any) -> tuple:
        self.wait_ready()
        if self._in_flight is not None:
            self.peek(self._in_flight)
        self._conn.send(request)
        return self._receive()

    # -- weights and rollouts -------------------------------------------------------------

    def publish(self, trainer: Trainer) -> None:
        """Copy the trainer's current weights into the shared buffers; only while no rollout is in flight."""
        assert self._in_flight is None, "weights change under a generating sampler"
        self.wait_ready()
        if self._buffers is None:
            self._buffers = {name: t.detach().to("cpu", copy=True).contiguous().share_memory_()
                             for name, t in trainer.export_weights()}
            self._call("weights", self._buffers, trainer.name)
            return
        with torch.no_grad():
            for name, tensor in trainer.export_weights():
                if name not in self._buffers:
                    raise PluginError(f"trainer '{trainer.name}' exported '{name}', which it did not export before")
                self._buffers[name].copy_(tensor)

    def request(self, step: int, prompts: list[Prompt], group_size: int, seed: int, sync: bool) -> None:
        """Ask for the rollout of ``step``; returns at once, the worker generates meanwhile."""
        assert self._in_flight is None, "one rollout in flight at a time"
        self.wait_ready()
        self._conn.send(("generate", step, prompts, group_size, seed, sync))
        self._in_flight = step

    def peek(self, step: int) -> tuple[Rollout, dict[str, float], float]:
        """(rollout, sync metrics, generation seconds) of ``step``, waiting for it if needed; kept for :meth:`take`."""
        if step not in self._ready:
            if self._in_flight != step:
                raise PluginError(f"the sampler process has no rollout of step {step} (in flight: {self._in_flight})")
            self._in_flight = None
            _, got, rollout, metrics, seconds = self._receive()
            self._ready[got] = (rollout, metrics, seconds)
        return self._ready[step]

    def put(self, step: int, rollout: Rollout, sync_metrics: dict[str, float], generate_s: float) -> None:
        """A rollout of ``step`` from elsewhere (a checkpoint), taken as if the worker had made it."""
        self._ready[step] = (rollout, sync_metrics, generate_s)

    def take(self, step: int) -> tuple[Rollout, dict[str, float], float]:
        out = self.peek(step)
        del self._ready[step]
        return out

    def state_dict(self) -> dict[str, Any]:
        return self._call("state_dict")[1]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._call("load_state_dict", state)

    def close(self) -> None:
        """Stop the worker: asked first, terminated if it does not finish in time or is still generating
        (a rollout nobody will train on)."""
        if self._in_flight is not None:
            self._process.terminate()
        if self._process.is_alive():
            try:
                self._conn.send(("close",))
            except (OSError, BrokenPipeError):
                pass
            self._process.join(timeout=_CLOSE_TIMEOUT_S)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)
        self._conn.close()
        self._buffers = None
