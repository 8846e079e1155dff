"""Judges (preflab.judges): the math each one promises, the cache, and the HTTP judge against
a chat server this test runs on 127.0.0.1 (timeouts, 500s, malformed replies, the API key)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import torch

from preflab.cli import main
from preflab.errors import ConfigError
from preflab.judges import CachedJudge, JudgeCache, JudgeError, load_judge
from preflab.judges.http import HTTPJudge, parse_answer
from preflab.judges.lm import LMJudge
from preflab.judges.template import check_template

SENTINEL = "sk-SENTINEL-123"
KEY_ENV = "PREFLAB_TEST_JUDGE_KEY"


@pytest.fixture(autouse=True)
def no_proxy_for_the_local_server(monkeypatch):
    """urllib follows http_proxy; the test server is on this machine."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


# ------------------------------------------------------------------------------- LM judge
class AlwaysA(torch.nn.Module):
    """A stub causal LM whose next-token logits favour the "A" token by ``margin`` over "B",
    whatever it is shown (the other logits depend on the input, to show they do not count)."""

    def __init__(self, vocab_size: int, a_id: int, b_id: int, margin) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(vocab_size, vocab_size))
        self.a_id, self.b_id, self.margin = a_id, b_id, margin

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None,
                logits_to_keep=0):
        logits = self.weight[input_ids].clone()  # [B, T, V], depends on the text
        margin = self.margin(input_ids) if callable(self.margin) else self.margin
        logits[..., self.a_id] = logits[..., self.b_id] + torch.as_tensor(margin).reshape(-1, 1)
        return SimpleNamespace(logits=logits)


def stub_judge(tiny_tokenizer, margin) -> LMJudge:
    ids = [tiny_tokenizer.convert_tokens_to_ids(t) for t in ("good", "bad")]
    model = AlwaysA(len(tiny_tokenizer), *ids, margin)
    return LMJudge(model, tiny_tokenizer, answers=("good", "bad"), batch_size=3)


PROMPTS = ["the movie", "the plot", "it was"]
FIRST = ["great fun", "boring", "not very good"]
SECOND = ["awful", "really great acting", "fine"]


def test_lm_judge_that_always_answers_a_gives_one_half(tiny_tokenizer):
    """p_A(a,b) = p_A(b,a) = c for a judge that answers "A" whatever it sees, so
    P = (p_A(a,b) + p_B(b,a)) / 2 = (c + 1 - c) / 2 = 1/2: exactly, for any margin."""
    for margin in (3.0, 40.0):
        assert stub_judge(tiny_tokenizer, margin)(PROMPTS, FIRST, SECOND) == [0.5] * 3


def test_lm_judge_keeps_what_depends_on_the_content(tiny_tokenizer):
    """A preference that follows the texts is not cancelled: here the margin for "A" is a
    hash of the question (which differs between the two orders), so P moves away from 1/2,
    and still P(a better) + P(b better) = 1."""
    def margin(ids):
        position = (ids != 0).long().cumsum(-1)  # pads (id 0) have no say
        return ((ids * position).sum(-1) % 97).float() / 20 - 2

    judge = stub_judge(tiny_tokenizer, margin)
    forward, backward = judge(PROMPTS, FIRST, SECOND), judge(PROMPTS, SECOND, FIRST)
    assert all(0.0 < p < 1.0 for p in forward) and forward != [0.5] * 3
    assert [f + b for f, b in zip(forward, backward)] == pytest.approx([1.0] * 3, abs=1e-12)


def test_lm_judge_from_a_model_directory(tiny_model_dir):
    """A real (tiny, random) model: P in (0, 1), the order of a and b only flips P, and the
    same pair in a batch of others gets the same answer (left padding changes nothing)."""
    judge = load_judge(f"lm:{tiny_model_dir}", answers=("good", "bad"), device="cpu",
                       batch_size=2)
    forward, backward = judge(PROMPTS, FIRST, SECOND), judge(PROMPTS, SECOND, FIRST)
    assert all(0.0 < p < 1.0 for p in forward)
    assert [f + b for f, b in zip(forward, backward)] == pytest.approx([1.0] * 3, abs=1e-6)
    alone = judge(PROMPTS[2:], FIRST[2:], SECOND[2:])
    assert alone[0] == pytest.approx(forward[2], abs=1e-5)
    assert judge(["the"], ["fun"], ["fun"]) == [pytest.approx(0.5)]


def test_lm_judge_refuses_answers_its_tokenizer_cannot_tell_apart(tiny_model_dir):
    with pytest.raises(ConfigError, match="does not tell the answers 'A' and 'B' apart"):
        load_judge(f"lm:{tiny_model_dir}", device="cpu")  # A and B are both <unk> here


@pytest.mark.parametrize("template, problem", [
    ("{prompt} {a}", "does not show {b}"),
    ("{prompt} {a} {b} {c}", "placeholder {c}"),
    ("{prompt} {a} {b} {", "not valid format text"),
    ("{prompt} {a!r} {b}", "placeholder {a!r}"),
])
def test_judge_template_is_checked(template, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        check_template(template)


# ----------------------------------------------------------------- reward and world judges
LENGTH = "def length(prompts, completions, **kwargs):\n    return [len(c.split()) for c in completions]\n"


def test_reward_judge_is_the_sigmoid_of_the_reward_difference(tmp_path):
    """P(a better) = sigmoid(r_a - r_b), with r the (weighted) reward."""
    path = tmp_path / "rewards.py"
    path.write_text(LENGTH)
    a, b = ["one two three", "x", "same words"], ["one", "x y z w", "same words"]
    p = load_judge(f"{path}:length")(["q"] * 3, a, b)
    assert p == pytest.approx([1 / (1 + math.exp(-2)), 1 / (1 + math.exp(3)), 0.5])
    half = load_judge(f"{path}:length:0.5")(["q"] * 3, a, b)
    assert half[0] == pytest.approx(1 / (1 + math.exp(-1.0)))


def test_reward_model_directory_as_a_judge(tiny_model_dir):
    """A model directory (here a causal LM, scored through a new scalar head as `preflab rm`
    saves one) is a reward-model judge: P = sigmoid(r_a - r_b) with its own scores."""
    judge = load_judge(str(tiny_model_dir), device="cpu")
    reward = judge.reward.components[0].fn
    a, b = ["great fun", "boring"], ["awful", "really great acting"]
    r_a, r_b = reward(["the movie"] * 2, a), reward(["the movie"] * 2, b)
    want = [1 / (1 + math.exp(y - x)) for x, y in zip(r_a, r_b)]
    assert judge(["the movie"] * 2, a, b) == pytest.approx(want, abs=1e-6)


def test_world_judges_are_symmetric_and_seeded(tiny_world):
    import json as _json

    sft = [_json.loads(line) for line in (tiny_world / "sft.jsonl").read_text().splitlines()]
    prompts = [r["prompt"] for r in sft[:40]]
    a = [r["completion"] for r in sft[:40]]
    b = [r["completion"] for r in sft[40:80]]
    for spec in (f"world:{tiny_world}", f"world-gold:{tiny_world}"):
        judge = load_judge(spec)
        forward = judge(prompts, a, b)
        assert set(forward) <= {0.0, 0.5, 1.0}
        assert judge(prompts, b, a) == [1.0 - p for p in forward]
        assert load_judge(spec)(prompts[::-1], a[::-1], b[::-1]) == forward[::-1]


# -------------------------------------------------------------------------------- the cache
class Counting:
    """A judge that counts the pairs it is asked: P = 1 when a is the longer text."""

    identity = "counting"
    batch_size = 4

    def __init__(self) -> None:
        self.asked = []

    def __call__(self, prompts, a, b):
        self.asked += list(zip(prompts, a, b))
        return [float(len(x) > len(y)) if len(x) != len(y) else 0.5 for x, y in zip(a, b)]


def test_cache_answers_a_second_run_and_either_order(tmp_path):
    path = tmp_path / "cache.sqlite"
    inner = Counting()
    judge = CachedJudge(inner, JudgeCache(path))
    first = judge(["p", "p", "q"], ["long text", "x", "same"], ["short", "xyz", "same"])
    assert first == [1.0, 0.0, 0.5] and len(inner.asked) == 2  # identical texts: not asked
    again = CachedJudge(inner, JudgeCache(path))  # a new process, the same file
    assert again(["p", "p"], ["short", "long text"], ["long text", "short"]) == [0.0, 1.0]
    assert len(inner.asked) == 2 and again.asked == 0


def test_cache_keeps_what_a_failing_batch_answered(tmp_path):
    class FailsAfterOne(Counting):
        def __call__(self, prompts, a, b):
            super().__call__(prompts[:1], a[:1], b[:1])
            # the judge is asked in canonical order, ("p", "a", "aa"): "a" is not better
            raise JudgeError("the endpoint went away", answered={0: 0.0})

    cache = JudgeCache(tmp_path / "cache.sqlite")
    with pytest.raises(JudgeError):
        CachedJudge(FailsAfterOne(), cache)(["p", "q"], ["aa", "bb"], ["a", "b"])
    inner = Counting()
    assert CachedJudge(inner, cache)(["p", "q"], ["aa", "bb"], ["a", "b"]) == [1.0, 1.0]
    assert inner.asked == [("q", "b", "bb")]  # only the one left, in canonical order


# ------------------------------------------------------------- HTTP judge, a local server
def longer_answer(content: str) -> str:
    """The fake judge's taste: the longer response (so both orders agree)."""
    m = re.search(r"Response A:\n(.*)\n\nResponse B:\n(.*)\n\nReply with", content, re.S)
    return "A" if len(m[1]) > len(m[2]) else "B"


class FakeChat(ThreadingHTTPServer):
    """An OpenAI-style /v1/chat/completions endpoint. ``behave(content, attempt)`` says what
    to do with each request: ok, 500, malformed, unreadable, close, timeout or 401."""

    daemon_threads = True
    request_queue_size = 128  # the default 5 drops connections: the client's SYN waits 1 s

    def __init__(self, behave=None, answer=longer_answer, on_answer=None) -> None:
        super().__init__(("127.0.0.1", 0), ChatHandler)
        self.behave = behave or (lambda content, attempt: "ok")
        self.answer = answer
        self.on_answer = on_answer
        self.lock = threading.Lock()
        self.attempts: Counter = Counter()
        self.answered: Counter = Counter()
        self.keys_seen: set = set()
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up on a slow reply: expected here

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


class ChatHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/v1/chat/completions" and body["temperature"] == 0
        content = body["messages"][0]["content"]
        with server.lock:
            server.attempts[content] += 1
            attempt = server.attempts[content]
            server.keys_seen.add(self.headers.get("Authorization"))
        action = server.behave(content, attempt)
        if action == "timeout":
            time.sleep(0.5)
            return self._send(200, b"{}")
        if action == "close":
            self.close_connection = True
            return None
        if action == "500":
            return self._send(500, b'{"error": "overloaded"}')
        if action == "401":
            return self._send(401, json.dumps({"error": f"bad key {self.headers.get('Authorization')}"}).encode())
        if action == "malformed":
            return self._send(200, b'{"choices": [{"message": ')
        text = "I cannot decide." if action == "unreadable" else server.answer(content)
        reply = {"choices": [{"message": {"role": "assistant", "content": text}}]}
        self._send(200, json.dumps(reply).encode())
        if action == "ok":
            with server.lock:
                server.answered[content] += 1
                if server.on_answer:
                    server.on_answer(sum(server.answered.values()))


def http_judge(server, **kw) -> HTTPJudge:
    settings = {"base_url": server.url, "timeout": 0.2, "retries": 4, "backoff": 0.001,
                "concurrency": 4, "api_key_env": KEY_ENV, **kw}
    return HTTPJudge("test-model", **settings)


def test_parse_answer():
    ab = ("A", "B")
    for text, want in [("A", 0), (" b.", 1), ("**B**", 1), ("A is better", 0),
                       ("Answer: B", 1), ("The better response is A.", 0),
                       ("I think a good choice is B", 1), ("Both A and B", None), ("", None)]:
        assert parse_answer(text, ab) == want, text


def test_http_judge_survives_a_timeout_a_500_and_a_malformed_reply():
    script = {1: "timeout", 2: "500", 3: "malformed", 4: "unreadable", 5: "close"}
    with FakeChat(lambda content, attempt: script.get(attempt, "ok")) as server:
        judge = http_judge(server, retries=5)
        assert judge(["review"], ["a long answer"], ["short"]) == [1.0]
        assert sorted(server.attempts.values()) == [6, 6]  # both orders: 5 failures, then ok
        assert sum(server.answered.values()) == 2


def test_http_judge_gives_a_clear_error_when_failures_persist(tmp_path, capsys):
    with FakeChat(lambda content, attempt: "500") as server:
        with pytest.raises(JudgeError, match=r"gave no usable answer in 3 attempts; the last "
                                             r"problem: HTTP 500"):
            http_judge(server, retries=2)(["p"], ["a"], ["bb"])
        samples = tmp_path / "samples.jsonl"
        samples.write_text(json.dumps({"prompt": "p", "completions": ["a", "bb"]}) + "\n")
        code = main(["label", "--judge", "http:test-model", "--judge-base-url", server.url,
                     "--in", str(samples), "--out", str(tmp_path / "pairs.jsonl"),
                     "--judge-retries", "1", "--judge-backoff", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"the judge endpoint {server.url}/chat/completions gave no usable answer in 2 " \
           "attempts; the last problem: HTTP 500" in err


def test_http_judge_always_a_gives_one_half():
    with FakeChat(answer=lambda content: "A") as server:
        assert http_judge(server)(["p", "q"], ["x", "y y"], ["z z z", "w"]) == [0.5, 0.5]


def write_samples(path, n: int) -> None:
    """n prompts, two completions each, of different lengths."""
    path.write_text("".join(json.dumps({"prompt": f"prompt {i}", "completions":
                                        [f"yes {i}", f"no no no {i}" if i % 2 else f"{i}"]}) + "\n"
                            for i in range(n)))


def flaky(content: str, attempt: int) -> str:
    """A fifth of the questions fail on their first attempt, in turn by each failure kind."""
    h = int.from_bytes(hashlib.sha256(content.encode()).digest()[:4], "big") % 1000
    if attempt == 1 and h % 5 == 0:
        return ("500", "malformed", "unreadable", "close")[h // 5 % 4]
    return "ok"


def label_args(server, samples, out, *extra):
    return ["label", "--judge", "http:test-model", "--judge-base-url", server.url,
            "--api-key-env", KEY_ENV, "--in", str(samples), "--out", str(out),
            "--judge-retries", "6", "--judge-backoff", "0.001", "--judge-timeout", "5",
            "--judge-concurrency", "8", "--no-progress", *extra]


def test_label_500_pairs_through_failures_each_asked_once_key_never_written(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, SENTINEL)
    samples, out = tmp_path / "samples.jsonl", tmp_path / "pairs.jsonl"
    write_samples(samples, 500)
    with FakeChat(flaky) as server:
        assert main(label_args(server, samples, out)) == 0
        failed = sum(server.attempts.values()) - sum(server.answered.values())
        assert 150 <= failed <= 250  # about 20% of the 1,000 requests failed once
        assert len(server.answered) == 1000 and set(server.answered.values()) == {1}
        assert server.keys_seen == {f"Bearer {SENTINEL}"}
        requests = sum(server.attempts.values())
        # a second run (same cache) asks nothing
        assert main(label_args(server, samples, out, "--overwrite")) == 0
        assert sum(server.attempts.values()) == requests
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(pairs) == 500
    assert all(len(p["chosen"]) > len(p["rejected"]) and p["p_chosen"] == 1.0 for p in pairs)
    # the key is in no file the run wrote, nor in what it printed; and a refused key's
    # error (the server echoes the header) does not show it either
    with FakeChat(lambda content, attempt: "401") as server:
        assert main(label_args(server, samples, tmp_path / "other.jsonl")) == 2
    out_text, err_text = capsys.readouterr()
    assert "refused the API key (HTTP 401)" in err_text and KEY_ENV in err_text
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) >= 3
    for path in written:
        assert SENTINEL.encode() not in path.read_bytes(), path
    assert SENTINEL not in out_text + err_text


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_label_stopped_by_a_signal_resumes_without_asking_again(signum, tmp_path, capsys):
    """SIGTERM (143) or Ctrl-C (130) midway: the batch in flight is finished and cached, the
    run stops, and the same command again asks only what is left, nothing twice."""
    samples, out = tmp_path / "samples.jsonl", tmp_path / "pairs.jsonl"
    write_samples(samples, 200)
    sent = []

    def stop_once(answered: int) -> None:
        if answered >= 150 and not sent:
            sent.append(answered)
            os.kill(os.getpid(), signum)

    with FakeChat(on_answer=stop_once) as server:
        assert main(label_args(server, samples, out)) == 128 + signum
        assert not out.exists()
        first = sum(server.answered.values())
        assert 150 <= first < 400
        assert f"stopped by {signum.name} after judging" in capsys.readouterr().err
        assert main(label_args(server, samples, out)) == 0
    assert len(server.answered) == 400 and set(server.answered.values()) == {1}
    assert len(out.read_text().splitlines()) == 200
    assert f"{first // 2} of 200 pairs already answered" in capsys.readouterr().out
