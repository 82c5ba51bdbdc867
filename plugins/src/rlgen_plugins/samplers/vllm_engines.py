"""The two ways the ``vllm`` sampler talks to vLLM: an in-process engine, or an HTTP server.

Both take prompts as token ids (so the prompt is exactly what the ``hf`` sampler would feed
its model), one sampling dict per sample (the keyword names that ``vllm.SamplingParams`` and
the OpenAI-compatible ``/v1/completions`` body share), and return the sampled ids with their
log-probs. Both load new weights in Hugging Face checkpoint layout through vLLM's in-place
``reload_weights`` worker method, which re-runs each layer's post-load processing (fused
q/k/v, CPU kernel repacking, quantisation), and then drop the prefix cache, whose KV blocks
were computed with the old weights.

``import vllm`` happens only in :class:`ColocateEngine` (the server runs in its own process),
because importing it rewrites environment variables and patches torch inductor.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from rlgen import PluginError

#: the model name the server started by rlgen serves
SERVED_NAME = "rlgen-policy"
#: most bytes per safetensors file when weights are written for a server
SHARD_BYTES = 2 << 30


@dataclass
class EngineSettings:
    """What both engine kinds are built from (resolved by the sampler's ``setup``)."""

    model: str
    tokenizer: str
    dtype: str
    seed: int
    trust_remote_code: bool
    logprobs_mode: str
    enforce_eager: bool
    gpu_memory_utilization: float
    kv_cache_bytes: int | None
    max_model_len: int | None
    tensor_parallel_size: int


@dataclass
class Generated:
    """One sample: every token vLLM produced (EOS and stop tokens included) and their log-probs."""

    token_ids: list[int]
    logprobs: list[float]


def on_cpu() -> bool:
    """Whether vLLM runs on its CPU backend here (imports vllm: call only while building an engine)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def check_cpu_head_size(model: str, trust_remote_code: bool) -> None:
    """Fail early, with the reason, on an attention head size the CPU backend has no kernel for.

    vLLM itself only notices at the first forward pass ("Unsupported CPU attention
    configuration"), after the engine has spent its start-up time.
    """
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        sizes = list(CPUAttentionBackend.get_supported_head_sizes())
    except (ImportError, AttributeError):  # another vLLM layout: let vLLM report it
        return
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    cfg = getattr(cfg, "text_config", None) or cfg
    heads = getattr(cfg, "num_attention_heads", None)
    head = getattr(cfg, "head_dim", None) or (cfg.hidden_size // heads if heads else None)
    if head is not None and head not in sizes:
        raise PluginError(
            f"sampler 'vllm': the model {model} has attention head size {head}, which vLLM's CPU backend "
            f"does not support (supported: {sizes})"
        )


def _logprob_of(entry: Any, token: int) -> float:
    """The sampled token's log-prob from one position of ``CompletionOutput.logprobs``."""
    value = entry[token]
    return float(getattr(value, "logprob", value))


class ColocateEngine:
    """An in-process ``vllm.LLM`` next to the trainer; weights arrive as tensors, no copy on disk.

    The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so the
    trainer's tensors can be handed to the model loader directly. Under a multi-rank trainer
    (``torch.distributed`` already initialised) each rank runs its own engine on the existing
    process group (vLLM's ``external_launcher``). With ``sleep_level`` > 0 the engine frees its
    GPU memory after each generation (level 1 keeps a CPU copy of the weights, level 2
    drops them: the next sync reloads them anyway) and wakes before the next use.
    """

    def __init__(self, settings: EngineSettings, sleep_level: int, extra: dict[str, Any]) -> None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # tensors must reach the worker in-process
        import vllm
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            check_cpu_head_size(settings.model, settings.trust_remote_code)
        self.sleep_level = sleep_level if current_platform.is_sleep_mode_available() else 0
        kwargs: dict[str, Any] = dict(
            model=settings.model,
            tokenizer=settings.tokenizer,
            dtype=settings.dtype,
            seed=settings.seed,
            trust_remote_code=settings.trust_remote_code,
            logprobs_mode=settings.logprobs_mode,
            generation_config="vllm",  # no sampling defaults from the model's generation_config.json
            enforce_eager=settings.enforce_eager,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            kv_cache_memory_bytes=settings.kv_cache_bytes,
            max_model_len=settings.max_model_len,
            tensor_parallel_size=settings.tensor_parallel_size,
            enable_sleep_mode=self.sleep_level > 0,
        )
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            kwargs["distributed_executor_backend"] = "external_launcher"
        kwargs.update(extra)
        # vLLM's CPU worker replaces torch.set_num_threads process-wide with a no-op; in a
        # colocated run that would silently override the trainer's and other plugins' settings.
        set_num_threads = torch.set_num_threads
        try:
            self.llm = vllm.LLM(**kwargs)
        finally:
            torch.set_num_threads = set_num_threads
        self._sampling_params = vllm.SamplingParams
        self._asleep: set[str] = set()
        self._weights_dropped = False

    def generate(self, prompts: list[list[int]], sampling: list[dict[str, Any]]) -> list[Generated]:
        if self._weights_dropped:
            raise PluginError("sampler 'vllm': sleep_level 2 dropped the weights after the last generation; "
                              "sync_weights must run before the next one (or use sleep_level 1)")
        self._wake(None)
        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in prompts],
            [self._sampling_params(**s) for s in sampling],
            use_tqdm=False,
        )
        result = []
        for out in outputs:
            o = out.outputs[0]
            ids = list(o.token_ids)
            logprobs = [_logprob_of(entry, t) for entry, t in zip(o.logprobs or [], ids)]
            if len(logprobs) != len(ids):
                raise PluginError(f"sampler 'vllm': the engine returned {len(ids)} tokens but {len(logprobs)} log-probs")
            result.append(Generated(ids, logprobs))
        if self.sleep_level:
            self.llm.sleep(level=self.sleep_level)
            self._asleep = {"weights", "kv_cache"}
            self._weights_dropped = self.sleep_level == 2
        return result

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> dict[str, float]:
        self._wake(["weights"])
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights), "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        self._weights_dropped = False
        return {}

    def _wake(self, tags: list[str] | None) -> None:
        todo = sorted(self._asleep if tags is None else self._asleep & set(tags))
        if todo:
            self.llm.wake_up(tags=todo)
            self._asleep -= set(todo)

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()  # also tears down the distributed state vLLM set up in this process
        self.llm = None
        gc.collect()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ServerEngine:
    """An OpenAI-compatible vLLM server that rlgen starts (and stops) or attaches to.

    Generation: one ``/v1/completions`` request per sample (each has its own seed), sent
    concurrently so the server batches them. Weights: written as safetensors shards into
    ``weights_dir`` (a folder the server can read), then loaded with the dev-mode
    ``/collective_rpc`` call of ``reload_weights``; a server started by rlgen gets
    ``VLLM_SERVER_DEV_MODE=1``, one you attach to must have been started with it.
    """

    def __init__(
        self,
        settings: EngineSettings,
        *,
        url: str | None,
        host: str,
        port: int | None,
        extra_args: list[str],
        start_timeout_s: float,
        request_timeout_s: float,
        max_concurrent_requests: int,
        weights_dir: Path,
        log_dir: Path,
        env: dict[str, str],
    ) -> None:
        self.request_timeout_s = request_timeout_s
        self.max_concurrent_requests = max_concurrent_requests
        self.weights_dir = weights_dir
        self.proc: subprocess.Popen | None = None
        if url:
            self.base = url.rstrip("/")
            self._wait_healthy(start_timeout_s, log=None)
        else:
            port = port or _free_port(host)
            self.base = f"http://{host}:{port}"
            log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = log_dir / "server.log"
            cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *self.server_args(settings, host, port), *extra_args]
            (log_dir / "server_command.txt").write_text(" ".join(cmd) + "\n")
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(cmd, env={**os.environ, **env, "VLLM_SERVER_DEV_MODE": "1"},
                                             stdout=log, stderr=subprocess.STDOUT)
            # stop the server with this object or, at the latest, when the interpreter exits
            self._finalizer = weakref.finalize(self, _stop_process, self.proc)
            self._wait_healthy(start_timeout_s, log=self.log_path)
        models = self._request("GET", "/v1/models")["data"]
        if not models:
            raise PluginError(f"sampler 'vllm': the server at {self.base} serves no model")
        self.model_name = models[0]["id"]
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent_requests, thread_name_prefix="rlgen-vllm")

    @staticmethod
    def server_args(s: EngineSettings, host: str, port: int) -> list[str]:
        """Command-line arguments of ``vllm serve`` for these settings."""
        args = [
            "--model", s.model, "--tokenizer", s.tokenizer, "--served-model-name", SERVED_NAME,
            "--host", host, "--port", str(port), "--dtype", s.dtype, "--seed", str(s.seed),
            "--logprobs-mode", s.logprobs_mode, "--generation-config", "vllm",
            "--gpu-memory-utilization", str(s.gpu_memory_utilization),
            "--tensor-parallel-size", str(s.tensor_parallel_size),
        ]
        if s.enforce_eager:
            args.append("--enforce-eager")
        if s.trust_remote_code:
            args.append("--trust-remote-code")
        if s.kv_cache_bytes is not None:
            args += ["--kv-cache-memory-bytes", str(s.kv_cache_bytes)]
        if s.max_model_len is not None:
            args += ["--max-model-len", str(s.max_model_len)]
        return args

    # -- HTTP -------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.request_timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:2000]
            if exc.code == 404 and path in ("/collective_rpc", "/reset_prefix_cache"):
                detail += " (weight sync needs a server started with VLLM_SERVER_DEV_MODE=1)"
            raise PluginError(f"sampler 'vllm': {method} {self.base}{path} failed with HTTP {exc.code}: {detail}") from None
        except urllib.error.URLError as exc:
            raise PluginError(f"sampler 'vllm': cannot reach the vLLM server at {self.base}: {exc.reason}") from None
        return json.loads(raw) if raw else None

    def _wait_healthy(self, timeout_s: float, log: Path | None) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise PluginError(
                    f"sampler 'vllm': the vLLM server exited with code {self.proc.returncode} while starting; "
                    f"last lines of {log}:\n{_tail(log) if log else ''}"
                )
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=5):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise PluginError(f"sampler 'vllm': the vLLM server at {self.base} was not healthy after {timeout_s:.0f} s")
            time.sleep(1.0)

    # -- generation and weights -------------------------------------------------------------

    def _complete(self, prompt: list[int], sampling: dict[str, Any]) -> Generated:
        body = {"model": self.model_name, "prompt": prompt, **sampling, "return_token_ids": True}
        choice = self._request("POST", "/v1/completions", body)["choices"][0]
        ids = [int(t) for t in choice.get("token_ids") or []]
        logprobs = (choice.get("logprobs") or {}).get("token_logprobs") or []
        if len(logprobs) != len(ids):
            raise PluginError(f"sampler 'vllm': the server returned {len(ids)} tokens but {len(logprobs)} log-probs")
        return Generated(ids, [float(x) for x in logprobs])

    def generate(self, prompts: list[list[int]], sampling: list[dict[str, Any]]) -> list[Generated]:
        return list(self._pool.map(self._complete, prompts, sampling))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> dict[str, float]:
        t0 = time.perf_counter()
        write_shards(weights, self.weights_dir)
        t1 = time.perf_counter()
        self._request("POST", "/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(self.weights_dir)}})
        self._request("POST", "/reset_prefix_cache", {})
        return {"sync_write_s": t1 - t0, "sync_load_s": time.perf_counter() - t1}

    def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if self.proc is not None:
            self._finalizer()  # stops the server now, once


def write_shards(weights: Iterable[tuple[str, torch.Tensor]], folder: Path, shard_bytes: int = SHARD_BYTES) -> None:
    """Stream ``(name, tensor)`` pairs into ``folder/model-NNNNN.safetensors`` files of bounded size.

    Previous shards are removed first. Tensors that share storage (tied embeddings) are
    cloned, since a safetensors file cannot hold two views of one buffer.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.safetensors"):
        old.unlink()
    shard: dict[str, torch.Tensor] = {}
    size, index, seen = 0, 0, set()

    def flush() -> None:
        nonlocal shard, size, index
        if shard:
            index += 1
            tmp = folder / f".model-{index:05d}.tmp"
            save_file(shard, str(tmp))
            os.replace(tmp, folder / f"model-{index:05d}.safetensors")
        shard, size = {}, 0

    for name, tensor in weights:
        t = tensor.detach().to("cpu")
        ptr = t.untyped_storage().data_ptr()
        t = t.clone() if ptr in seen else t.contiguous()
        seen.add(ptr)
        nbytes = t.numel() * t.element_size()
        if shard and size + nbytes > shard_bytes:
            flush()
        shard[name] = t
        size += nbytes
    flush()


def counted(weights: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype | None, stats: dict[str, float]) -> Iterator[tuple[str, torch.Tensor]]:
    """Pass weights through (floating ones cast to the engine dtype), counting tensors and bytes in ``stats``."""
    for name, tensor in weights:
        if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        stats["sync_tensors"] = stats.get("sync_tensors", 0.0) + 1
        stats["sync_mb"] = stats.get("sync_mb", 0.0) + tensor.numel() * tensor.element_size() / 2**20
        yield name, tensor
