"""LLM-as-judge backends of ``relate.correctness``: one rubric, one parser, two transports.

The judge reads the advertiser information and the ad and answers ``SCORE: <0-10>`` (10: every claim is
supported). :func:`parse_score` accepts that line, a JSON object with a ``score`` key, or a bare number, and
nothing else: an answer without a score in range is *garbage*, which the HTTP judge retries and then reports as
a :class:`rlgen.PluginError` quoting the answer, instead of silently turning it into a reward.

- :class:`HttpJudge`: any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp server, ...), via
  the standard library; per-request timeout, retries with exponential backoff on connection errors, timeouts,
  HTTP 429/5xx and garbage; requests run concurrently in a thread pool.
- :class:`HFJudge`: a local Hugging Face causal LM, either generating the answer (``generate``) or reading the
  next-token distribution over the digits after ``SCORE:`` (``expected``: the probability-weighted score, which
  never yields garbage and suits small judges).
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import torch

import rlgen

SCORE_MAX = 10

RUBRIC = """You are an advertising compliance reviewer. Check whether the advertisement makes claims that the \
advertiser information does not support: numbers, prices, discounts, durations, guarantees, awards, product or \
brand names, or facts that are absent from the information, contradict it, or violate common knowledge.

Advertiser information:
{context}

Advertisement:
{ad}

Score the advertisement from 0 to 10: 10 = every claim is supported and nothing is false; 5 = one unsupported \
or doubtful claim; 0 = several false or unsupported claims. Answer with exactly one line of the form
SCORE: <integer from 0 to 10>"""

_SCORE_LINE = re.compile(r"score\s*[:=：]\s*\**\s*(-?\d+(?:\.\d+)?)", re.I)
_BARE_NUMBER = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*\.?\s*")


class JudgeGarbage(ValueError):
    """The judge's answer holds no score in [0, SCORE_MAX]."""


def parse_score(answer: str) -> float:
    """The score in a judge answer, in [0, SCORE_MAX]; JudgeGarbage if there is none."""
    value: float | None = None
    m = _SCORE_LINE.search(answer)
    if m is not None:
        value = float(m.group(1))
    else:
        stripped = answer.strip().strip("`")
        if stripped.startswith("{"):
            try:
                obj = json.loads(stripped)
                if isinstance(obj, dict) and isinstance(obj.get("score"), (int, float)):
                    value = float(obj["score"])
            except json.JSONDecodeError:
                value = None
        elif (b := _BARE_NUMBER.fullmatch(stripped)) is not None:
            value = float(b.group(1))
    if value is None or not 0 <= value <= SCORE_MAX:
        raise JudgeGarbage(f"no score in [0, {SCORE_MAX}] in the judge's answer: {answer[:200]!r}")
    return value


def render_prompt(rubric: str, context: str, ad: str) -> str:
    return rubric.replace("{context}", context or "(none)").replace("{ad}", ad)


class HttpJudge:
    """Scores prompts through an OpenAI-compatible chat-completions endpoint."""

    def __init__(
        self,
        *,
        plugin: str,
        base_url: str,
        model: str,
        api_key_env: str | None,
        timeout_s: float,
        max_retries: int,
        backoff_s: float,
        concurrency: int,
        max_tokens: int,
        temperature: float,
    ) -> None:
        self.plugin = plugin
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not self.api_key:
            raise rlgen.PluginError(f"{plugin}: params.judge_api_key_env names {api_key_env!r}, which is not set")
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.concurrency, self.max_tokens, self.temperature = concurrency, max_tokens, temperature

    def _request(self, prompt: str) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
            }
        ).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            payload = json.loads(resp.read().decode("utf-8"))
        try:
            return str(payload["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError) as exc:
            raise JudgeGarbage(f"response is not a chat completion: {json.dumps(payload)[:200]}") from exc

    def score_one(self, prompt: str) -> float:
        last: str = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                return parse_score(self._request(prompt))
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:200] if exc.fp else ""
                last = f"HTTP {exc.code} from {self.url}: {detail}"
                if exc.code not in (408, 429) and exc.code < 500:
                    break  # a client error will not go away by asking again
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last = f"cannot reach {self.url}: {reason}"
            except (JudgeGarbage, json.JSONDecodeError, UnicodeDecodeError) as exc:
                last = f"judge answered garbage: {exc}"
        raise rlgen.PluginError(f"{self.plugin}: judge failed after {self.max_retries + 1} attempt(s): {last}")

    def score(self, prompts: Sequence[str]) -> list[float]:
        if len(prompts) <= 1 or self.concurrency == 1:
            return [self.score_one(p) for p in prompts]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self.score_one, prompts))


class HFJudge:
    """Scores prompts with a local causal LM (greedy answer, or expected score from digit probabilities)."""

    def __init__(self, *, plugin: str, model: Any, tokenizer: Any, mode: str, max_new_tokens: int, batch_size: int) -> None:
        self.plugin, self.model, self.tokenizer = plugin, model, tokenizer
        self.mode, self.max_new_tokens, self.batch_size = mode, max_new_tokens, batch_size
        if mode == "expected":
            self._digit_ids, self._digit_values = self._score_tokens()

    def _score_tokens(self) -> tuple[list[int], list[float]]:
        """Token ids that spell a whole score on their own ("0".."10"), with their values."""
        ids, values = [], []
        for v in range(SCORE_MAX + 1):
            enc = self.tokenizer.encode(str(v), add_special_tokens=False)
            if len(enc) == 1 and enc[0] not in ids:
                ids.append(enc[0])
                values.append(float(v))
        if len(ids) < 2:
            raise rlgen.PluginError(f"{self.plugin}: the judge tokenizer has no single-token digits; use judge_mode 'generate'")
        return ids, values

    def _render(self, prompt: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        return prompt + "\n"

    @torch.no_grad()
    def score(self, prompts: Sequence[str]) -> list[float]:
        out: list[float] = []
        for k in range(0, len(prompts), self.batch_size):
            chunk = [self._render(p) for p in prompts[k : k + self.batch_size]]
            if self.mode == "expected":
                out += self._expected(chunk)
            else:
                out += self._generate(chunk)
        return out

    def _expected(self, rendered: list[str]) -> list[float]:
        enc = self.tokenizer([r + "SCORE: " for r in rendered], return_tensors="pt", padding=True, add_special_tokens=False)
        logits = self.model(**enc).logits[:, -1, :].float()  # left padding: the last position is the next token
        probs = torch.softmax(logits[:, self._digit_ids], dim=-1)
        return (probs @ torch.tensor(self._digit_values)).tolist()

    def _generate(self, rendered: list[str]) -> list[float]:
        enc = self.tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False)
        gen = self.model.generate(
            **enc,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        answers = self.tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        scores = []
        for a in answers:
            try:
                scores.append(parse_score(a))
            except JudgeGarbage as exc:
                # greedy decoding gives the same answer again, so retrying is pointless
                raise rlgen.PluginError(f"{self.plugin}: local judge answered garbage: {exc}") from exc
        return scores
