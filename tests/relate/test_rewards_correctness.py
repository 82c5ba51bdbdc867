"""relate.correctness: the offline rule checker, and the LLM judge against a real local HTTP server and tiny-llama."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

import rlgen
from rlgen.reward import check_reward_result
from rlgen_plugins.models import load_tokenizer
from rlgen_relate.rewards import CorrectnessReward
from rlgen_relate.rewards._judge import JudgeGarbage, parse_score

CONTEXT = {
    "query": "green tea",
    "selling_points": ["20% off for members", "price 19.99", "returns within 1 month", "over 5,000 customers"],
    "landing_page": "TeaCo ships worldwide. Full refund if you are not satisfied.",
}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("builtin:minilm-l6", padding_side="right")


def rollout(tok, texts, meta=None):
    return rlgen.Rollout.from_texts(tok, texts, list(range(len(texts))), meta or [CONTEXT] * len(texts))


def run(provider, tok, texts, meta=None):
    r = rollout(tok, texts, meta)
    return check_reward_result(provider.score(r), plugin=provider.name, granularity="sentence", rollout=r)


# -- rules backend ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ad", "unsupported"),
    [
        ("Save 20% on green tea from TeaCo, now 19.99 dollars. Refund guaranteed.", []),
        ("Save 30% today", [("percent", "30%")]),
        ("Only $9.99 per box", [("price", "$9.99")]),
        ("Now $19.99 with 30-day returns", []),  # 30 days is the context's 1 month
        ("Comes with a 2-year warranty", [("duration", "2-year")]),
        ("Loved by 5000 customers", []),  # "5,000" in the context
        ("Loved by 8000 customers", [("number", "8000")]),
        ("百分之20的优惠，7天发货", [("duration", "7天")]),
        ("Our leaves are brewed in Japan by TeaCo", [("entity", "Japan")]),  # TeaCo is in the context
        ("Pairs well with the iPhone15", [("entity", "iPhone15")]),
        ("Great Green Tea For Everyone", []),  # title case is style, not names
        ("Ships worldwide; No minimum order", []),  # a clause after ";" starts with a capital as a sentence does
        # dots grouping thousands (a policy wrote this mid-training): a number, not a crash
        ("Funded 202.894.912 loans", [("number", "202.894.912")]),
    ],
)
def test_rule_checker(ad, unsupported):
    p = CorrectnessReward()
    context = "\n".join([CONTEXT["query"], "; ".join(CONTEXT["selling_points"]), CONTEXT["landing_page"]])
    bad, _ = p.unsupported_claims(ad, context)
    assert [(b["kind"], b["text"]) for b in bad] == unsupported


TRANSMISSION = ("transmission repair\nFree transmission diagnostic; Free towing within 15 miles for repairs; "
                "Rebuilds with a 3-year unlimited-mile warranty; Free consultation and test drive")


@pytest.mark.parametrize(
    ("ad", "offers"),
    [
        ("Free transmission repair. Free towing within 15 miles.", ["Free transmission repair"]),
        ("Free diagnostics and free towing for repairs", []),  # plural, and "for" ends the phrase
        ("Get free transmission diagnostics today", []),
        ("Complimentary towing", []),
        ("Free Consult on every rebuild", []),  # "consult" cites "consultation"
        ("Free 3-year unlimited repair available.", ["Free 3-year unlimited repair"]),  # the number is not a word
        ("Interest-free rebuilds", []),  # a "-free" compound offers nothing
        ("Free. Call now", []),  # a bare "Free" needs some free offer: there is one
        ("Free parking at the shop", ["Free parking"]),
    ],
)
def test_free_offers_need_the_same_offer_in_one_fact(ad, offers):
    bad, _ = CorrectnessReward().unsupported_claims(ad, TRANSMISSION)
    assert [b["text"] for b in bad if b["kind"] == "offer"] == offers


def test_a_bare_free_needs_a_free_offer_somewhere():
    bad, _ = CorrectnessReward().unsupported_claims("Free of any charge.", "Meals from $8.99 per serving")
    assert bad == [{"kind": "offer", "text": "Free"}]


def test_guarantees_need_a_guarantee_in_the_context(tok):
    p = CorrectnessReward()
    res = run(p, tok, ["Money-back guarantee on every order"] * 2, [{"selling_points": ["free shipping"]}, CONTEXT])
    assert res.details[0]["unsupported"] == [{"kind": "guarantee", "text": "Money-back guarantee"}]
    assert res.details[1]["unsupported"] == []


def test_values_and_kind_selection(tok):
    texts = ["Save 30% on 8000 boxes for $2", "Save 20%", "no claims at all"]
    res = run(CorrectnessReward(CorrectnessReward.Params(penalty_per_claim=0.3, max_penalty=0.8)), tok, texts)
    assert res.values.tolist() == pytest.approx([-0.8, 0.0, 0.0])  # 3 unsupported -> 0.9, capped at 0.8
    assert res.metrics["unsupported_rate"] == pytest.approx(1 / 3)
    only_percent = CorrectnessReward(CorrectnessReward.Params(checks=["percent"]))
    assert [d["kind"] for d in only_percent.unsupported_claims(texts[0], "nothing")[0]] == ["percent"]


# -- judge answer parsing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("answer", "score"), [
    ("SCORE: 7", 7.0), ("score=8.5", 8.5), ("**Score:** 9\n", 9.0), ('{"score": 4}', 4.0), ("6", 6.0), ("7/10", 7.0),
    ("The ad is fine.\nSCORE: 10", 10.0),
])
def test_parse_score(answer, score):
    assert parse_score(answer) == score


@pytest.mark.parametrize("answer", ["great ad", "SCORE: 11", "", "-1", "score: high", '{"rating": 3}', "7 out of 10 maybe"])
def test_parse_score_rejects_garbage(answer):
    with pytest.raises(JudgeGarbage):
        parse_score(answer)


# -- HTTP judge against a real server on 127.0.0.1 --------------------------------------------------------------------


class Judge:
    """A tiny OpenAI-compatible chat-completions server; `script(n, body)` decides reply n (0-based)."""

    def __init__(self, script):
        self.script = script
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                n = len(judge.requests)
                judge.requests.append(body)
                judge.headers.append(dict(self.headers))
                status, payload, delay = judge.script(n, body, self.path)
                time.sleep(delay)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def chat(content):
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


def http_provider(url, **kw):
    kw.setdefault("judge_backoff_s", 0.01)
    return CorrectnessReward(CorrectnessReward.Params(backend="http", judge_url=url, judge_model="judge-1", **kw))


def test_http_judge_scores_and_rubric(tok, monkeypatch):
    def script(n, body, path):
        prompt = body["messages"][0]["content"]
        return 200, chat("SCORE: 2" if "$9.99" in prompt else "SCORE: 10"), 0.0

    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    with Judge(script) as judge:
        p = http_provider(judge.url, judge_api_key_env="JUDGE_KEY")
        res = run(p, tok, ["Only $9.99", "Green tea 19.99", "Green tea 19.99"])
    assert res.values.tolist() == pytest.approx([-0.8, 0.0, 0.0])
    assert len(judge.requests) == 2  # the repeated ad is judged once
    body = judge.requests[0]
    assert body["model"] == "judge-1" and body["temperature"] == 0.0 and body["max_tokens"] == 16
    prompt = body["messages"][0]["content"]
    assert "20% off for members" in prompt and "SCORE: <integer from 0 to 10>" in prompt
    assert judge.headers[0]["Authorization"] == "Bearer sk-test"


def test_http_judge_retries_server_errors(tok):
    with Judge(lambda n, b, p: (503, "busy", 0.0) if n == 0 else (200, chat("SCORE: 5"), 0.0)) as judge:
        res = run(http_provider(judge.url, judge_concurrency=1), tok, ["Green tea"])
    assert res.values.tolist() == [pytest.approx(-0.5)] and len(judge.requests) == 2


def test_http_judge_garbage_is_a_clear_error(tok):
    with Judge(lambda n, b, p: (200, chat("What a lovely ad!"), 0.0)) as judge:
        with pytest.raises(rlgen.PluginError, match=r"relate\.correctness: judge failed after 3 attempt\(s\): judge answered garbage.*lovely ad"):
            run(http_provider(judge.url, judge_max_retries=2), tok, ["Green tea"])
    assert len(judge.requests) == 3
    with Judge(lambda n, b, p: (200, {"id": "x"}, 0.0)) as judge:
        with pytest.raises(rlgen.PluginError, match="not a chat completion"):
            run(http_provider(judge.url, judge_max_retries=0), tok, ["Green tea"])


def test_http_judge_timeout_and_client_error(tok):
    with Judge(lambda n, b, p: (200, chat("SCORE: 9"), 1.0)) as judge:
        start = time.perf_counter()
        with pytest.raises(rlgen.PluginError, match=r"judge failed after 2 attempt\(s\): cannot reach .*timed out"):
            run(http_provider(judge.url, judge_timeout_s=0.2, judge_max_retries=1), tok, ["Green tea"])
        assert time.perf_counter() - start < 1.5
    with Judge(lambda n, b, p: (400, '{"error": "unknown model"}', 0.0)) as judge:
        with pytest.raises(rlgen.PluginError, match=r"after 3 attempt\(s\): HTTP 400 .*unknown model"):
            run(http_provider(judge.url), tok, ["Green tea"])
    assert len(judge.requests) == 1  # a client error is not retried


def test_http_params_errors(monkeypatch):
    with pytest.raises(Exception, match="needs judge_url and judge_model"):
        CorrectnessReward.Params(backend="http")
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(rlgen.PluginError, match="NO_SUCH_KEY_VAR"):
        http_provider("http://127.0.0.1:9/v1", judge_api_key_env="NO_SUCH_KEY_VAR")


# -- local HF judge (tiny-llama: random weights, so a real model that answers garbage) -------------------------------


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("judge")
    return rlgen.RunContext(config=None, registry=rlgen.registry(), output_dir=tmp, cache_dir=tmp, seed=0)


def test_hf_judge_expected_score(tok, context):
    p = CorrectnessReward(CorrectnessReward.Params(backend="hf", judge_model="builtin:tiny-llama", judge_mode="expected"))
    p.setup(context)
    res = run(p, tok, ["Only $9.99", "Green tea 19.99"])
    assert ((res.values <= 0) & (res.values >= -1)).all()
    assert torch.equal(res.values, run(p, tok, ["Only $9.99", "Green tea 19.99"]).values)  # deterministic


def test_hf_judge_garbage_is_a_clear_error(tok, context):
    p = CorrectnessReward(CorrectnessReward.Params(backend="hf", judge_model="builtin:tiny-llama", judge_max_tokens=8))
    p.setup(context)
    with pytest.raises(rlgen.PluginError, match=r"relate\.correctness: local judge answered garbage"):
        run(p, tok, ["Green tea"])


def test_registered():
    assert rlgen.registry().rewards["relate.correctness"] is CorrectnessReward
