"""A judge behind any OpenAI-compatible chat endpoint: ``POST {base_url}/chat/completions``.

OpenAI, vLLM (``vllm serve``), llama.cpp's server, Ollama, LiteLLM and most hosted APIs
speak this protocol. The judge sends the rendered template (``preflab.judges.template``) as
one user message at temperature 0 and reads the reply's text: it must name one of the two
answers ("A" or "B"; see ``parse_answer``). Log-probabilities are not used (many endpoints do
not return them), so each question gives a vote, not a probability. Every pair is asked in
both orders and the votes are averaged, which cancels position bias::

    P(a better) = (vote_A(a, b) + vote_B(b, a)) / 2       in {0, 1/2, 1}

**The API key** is read from the environment variable whose name is given
(``OPENAI_API_KEY`` unless ``--api-key-env`` names another) and sent only as the
``Authorization: Bearer`` header of each request. It is not part of the judge's identity, so
it reaches no cache, label file, config or log, and every error message is redacted of it.
With the variable unset no ``Authorization`` header is sent (a local server needs none).

**Failures.** Each request has a timeout. A timeout, a refused or dropped connection, an
HTTP 408, 429 or 5xx, and a reply that is not JSON or names no answer are retried, after
``backoff * 2**attempt`` seconds (at most ``max_backoff``, with jitter), up to ``retries``
times; then a ``JudgeError`` names the endpoint, the pair and the last problem. 401 and 403
(the key) and other 4xx (the request) are not retried. ``concurrency`` threads send requests
at once. Only the standard library is used (``urllib``, ``concurrent.futures``).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from preflab.errors import ConfigError
from preflab.judges.cache import JudgeError
from preflab.judges.template import DEFAULT_ANSWERS, DEFAULT_TEMPLATE, check_template, render

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})  # and any other 5xx
LOOPBACK = ("localhost", "127.0.0.1", "::1")


class _Retry(Exception):
    """A failure worth another attempt; its text says what went wrong."""


def check_base_url(url: str) -> str:
    """``url`` without a trailing slash, if it is an http(s) URL without credentials."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"--judge-base-url {url[:80]!r} is not an http(s) URL",
                          field="judge_base_url", expected="e.g. https://api.openai.com/v1")
    if parsed.username or parsed.password or parsed.query or parsed.fragment:
        part = "credentials (user:password@)" if parsed.username or parsed.password else (
            "a query (?...)" if parsed.query else "a fragment (#...)")
        raise ConfigError(f"--judge-base-url holds {part}; the URL is saved with the judge's "
                          "answers, and /chat/completions is appended to it",
                          field="judge_base_url",
                          expected="a plain URL such as https://api.openai.com/v1; the key "
                                   "goes in the environment variable that --api-key-env names")
    return url.rstrip("/")


def parse_answer(text: str, answers: tuple[str, str]) -> int | None:
    """0 for the first answer, 1 for the second, None when the reply names neither clearly.

    Accepted: the answer alone, in either case ("A", "**B**", "a."); the answer first
    ("A is better", "Response B", "Answer: A"); or a reply in which exactly one of the two
    answers appears as a word. Past the answer alone, case counts, so the article "a" is
    not read as "A".
    """
    stripped = text.strip().strip("*_`'\".:()[] \n")
    for i, answer in enumerate(answers):
        if stripped.lower() == answer.lower():
            return i
    either = "|".join(re.escape(a) for a in answers)
    head = re.match(rf"^(?i:(?:the\s+)?(?:better\s+)?(?:response|answer|output)\s*(?:is\s*)?:?\s*)?"
                    rf"\W*({either})(?!\w)", stripped)
    if head:
        return answers.index(head.group(1))
    seen = {m.group(1) for m in re.finditer(rf"(?<!\w)({either})(?!\w)", stripped)}
    if len(seen) == 1:
        return answers.index(seen.pop())
    return None


class HTTPJudge:
    """``judge(prompts, a, b) -> P(a better)`` from an OpenAI-compatible chat endpoint."""

    def __init__(self, model: str, *, base_url: str = DEFAULT_BASE_URL,
                 api_key_env: str = "OPENAI_API_KEY", template: str = DEFAULT_TEMPLATE,
                 answers: tuple[str, str] = DEFAULT_ANSWERS, timeout: float = 60.0,
                 retries: int = 4, concurrency: int = 4, backoff: float = 1.0,
                 max_backoff: float = 30.0, batch_size: int | None = None) -> None:
        if not model:
            raise ConfigError("the HTTP judge needs a model name", field="judge",
                              expected="http:MODEL, e.g. http:gpt-4o-mini")
        self.model = model
        self.base_url = check_base_url(base_url)
        self.url = f"{self.base_url}/chat/completions"
        self.template = check_template(template)
        self.answers = tuple(answers)
        self.timeout, self.retries, self.concurrency = timeout, retries, concurrency
        self.backoff, self.max_backoff = backoff, max_backoff
        self.batch_size = batch_size or 8 * concurrency
        self.api_key_env = api_key_env
        self._key = os.environ.get(api_key_env) or None  # never stored anywhere else
        self.identity = (f"http|{self.url}|model={model}|answers={','.join(self.answers)}"
                         f"|template={self.template}")
        host = urllib.parse.urlsplit(self.base_url).hostname
        if self._key and self.base_url.startswith("http://") and host not in LOOPBACK:
            print(f"warning: the API key from ${api_key_env} is sent to {host} without TLS "
                  "(http://)", file=sys.stderr)

    def __repr__(self) -> str:  # no key here either
        return f"HTTPJudge(model={self.model!r}, url={self.url!r})"

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _request(self, content: str) -> urllib.request.Request:
        body = {"model": self.model, "temperature": 0,
                "messages": [{"role": "user", "content": content}]}
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        return urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"),
                                      headers=headers, method="POST")

    def _attempt(self, content: str) -> int:
        """One request: the answer's index, or _Retry / JudgeError."""
        try:
            with urllib.request.urlopen(self._request(content), timeout=self.timeout) as reply:
                raw = reply.read()
        except urllib.error.HTTPError as exc:
            status = exc.code
            if status in (401, 403):
                raise JudgeError(f"the judge endpoint {self.url} refused the API key (HTTP "
                                 f"{status})", expected=f"a valid key in the environment "
                                 f"variable ${self.api_key_env}") from None
            if status in RETRY_STATUS or status >= 500:
                raise _Retry(f"HTTP {status}") from None
            detail = _excerpt(self._redact(_read_error_body(exc)))
            raise JudgeError(f"the judge endpoint {self.url} rejected the request (HTTP "
                             f"{status}{': ' + detail if detail else ''})",
                             expected="a model name and endpoint that accept chat "
                                      "completions") from None
        except TimeoutError:
            raise _Retry(f"no reply within {self.timeout:g} s") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise _Retry(f"no reply within {self.timeout:g} s") from None
            raise _Retry(f"connection failed: {self._redact(str(reason))[:120]}") from None
        except (http.client.HTTPException, OSError) as exc:
            raise _Retry(f"connection failed: {type(exc).__name__}") from None
        try:
            text = json.loads(raw)["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError
        except (ValueError, KeyError, IndexError, TypeError):
            shown = _excerpt(self._redact(raw.decode("utf-8", "replace")))
            raise _Retry(f"the reply is not a chat completion: {shown!r}") from None
        answer = parse_answer(text, self.answers)
        if answer is None:
            raise _Retry(f"the reply names neither {self.answers[0]!r} nor "
                         f"{self.answers[1]!r}: {_excerpt(self._redact(text))!r}")
        return answer

    def ask(self, content: str) -> int:
        """The answer to one rendered question, retried as the module docstring says."""
        for attempt in range(self.retries + 1):
            try:
                return self._attempt(content)
            except _Retry as exc:
                problem = str(exc)
            if attempt < self.retries:
                delay = min(self.max_backoff, self.backoff * 2 ** attempt)
                time.sleep(delay * random.uniform(0.5, 1.0))
        raise JudgeError(f"the judge endpoint {self.url} gave no usable answer in "
                         f"{self.retries + 1} attempts; the last problem: {problem}",
                         expected="a reachable endpoint that answers with "
                                  f"{self.answers[0]!r} or {self.answers[1]!r} "
                                  "(--judge-timeout, --judge-retries)")

    def __call__(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[float]:
        questions = [render(self.template, p, x, y, self.answers) for p, x, y in zip(prompts, a, b)]
        questions += [render(self.template, p, y, x, self.answers) for p, x, y in zip(prompts, a, b)]
        n = len(prompts)
        votes: dict[int, int] = {}
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self.ask, q): i for i, q in enumerate(questions)}
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in done if f.exception() is not None), None)
            if failed is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            for future, i in futures.items():
                if future.done() and not future.cancelled() and future.exception() is None:
                    votes[i] = future.result()
        # vote_A(a, b) is answer 0 in the first order; vote_B(b, a) is answer 1 in the second
        answered = {i: (float(votes[i] == 0) + float(votes[n + i] == 1)) / 2
                    for i in range(n) if i in votes and n + i in votes}
        if failed is not None:
            exc = failed.exception()
            if not isinstance(exc, JudgeError):
                raise exc  # a bug, not the endpoint: keep its traceback
            raise JudgeError(exc.message, expected=exc.expected, answered=answered)
        return [answered[i] for i in range(n)]


def _read_error_body(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return ""


def _excerpt(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
