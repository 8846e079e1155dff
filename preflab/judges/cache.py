"""The judges' answer cache: every answer is kept on disk the moment its batch is answered.

A labelling job that is killed loses at most the batch in flight, and a second run asks the
judge nothing it asked before. The cache is one SQLite file (the standard library's
``sqlite3``; each batch is one transaction, so a kill mid-write leaves the last committed
state, never half an answer):

    answers(key TEXT PRIMARY KEY, p REAL)    key = sha256(judge identity, prompt, x, y)
    judges(id TEXT PRIMARY KEY, identity TEXT)   which judge each key prefix belongs to

The key is order-free: the two completions are put in a canonical order (``x <= y``) and
``p`` is the probability that ``x`` is the better one. Judges keep the contract
``judge(p, b, a) == 1 - judge(p, a, b)`` (position bias is cancelled inside the judge), so
asking for ``(b, a)`` after ``(a, b)`` is answered from the cache too.

A judge's identity names everything that changes its answers (the model's files, the
template, the endpoint, the seed) and never a secret: an API key is not part of it.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from preflab.errors import ConfigError

SCHEMA_VERSION = "preflab-judge-cache/1"


class JudgeError(ConfigError):
    """A judge that could not answer (an endpoint that keeps failing, ...). ``answered``
    maps the positions of the batch that were answered anyway to their probabilities, so
    the cache keeps them."""

    def __init__(self, message: str, *, answered: dict[int, float] | None = None, **where):
        super().__init__(message, **where)
        self.answered = dict(answered or {})


def fingerprint(path: str | Path) -> str:
    """What a model directory or file holds, cheaply: a hash of each file's name, size and
    modification time (a retrained model in the same directory is a new judge). A name that
    is not a local path (a hub id) is its own fingerprint."""
    root = Path(path).expanduser()
    if not root.exists():
        return str(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for f in files:
        stat = f.stat()
        digest.update(f"{f.relative_to(root) if f != root else f.name}\x00{stat.st_size}"
                      f"\x00{stat.st_mtime_ns}\x00".encode("utf-8", "surrogateescape"))
    return f"{root.resolve()}#{digest.hexdigest()[:16]}"


def pair_key(identity_hash: str, prompt: str, x: str, y: str) -> str:
    text = "\x00".join((identity_hash, prompt, x, y))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def identity_hash(identity: str) -> str:
    return hashlib.sha256(f"{SCHEMA_VERSION}\x00{identity}".encode("utf-8", "surrogatepass")
                          ).hexdigest()


class JudgeCache:
    """``{key: p}`` in a SQLite file (``path``), or in memory when ``path`` is None."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        target = ":memory:" if self.path is None else str(self.path)
        try:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(target, timeout=30)
            with self.db:
                self.db.execute("CREATE TABLE IF NOT EXISTS answers "
                                "(key TEXT PRIMARY KEY, p REAL NOT NULL)")
                self.db.execute("CREATE TABLE IF NOT EXISTS judges "
                                "(id TEXT PRIMARY KEY, identity TEXT NOT NULL)")
        except (sqlite3.DatabaseError, OSError) as exc:
            raise ConfigError(f"cannot open the judge cache: {exc}", path=str(path),
                              expected="a judge cache written by `preflab label`, or a new "
                                       "file name") from None

    def register(self, identity: str) -> str:
        """Record a judge's identity; return the hash its keys start from."""
        digest = identity_hash(identity)
        with self.db:
            self.db.execute("INSERT OR IGNORE INTO judges VALUES (?, ?)", (digest, identity))
        return digest

    def get_many(self, keys: Sequence[str]) -> dict[str, float]:
        found: dict[str, float] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):  # SQLite's bound-parameter limit
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(f"SELECT key, p FROM answers WHERE key IN ({marks})", chunk)
            found.update(rows.fetchall())
        return found

    def put_many(self, items: dict[str, float]) -> None:
        if items:
            with self.db:  # one transaction: all of the batch or none of it
                self.db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?)",
                                    list(items.items()))

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self.db.close()


class CachedJudge:
    """A judge whose every answer goes through a ``JudgeCache``; called like the judge.

    ``asked`` counts the pairs passed on to the judge itself (cache misses). Identical
    completions get 0.5 without asking anyone.
    """

    def __init__(self, judge, cache: JudgeCache) -> None:
        self.judge = judge
        self.cache = cache
        self.identity = judge.identity
        self.batch_size = judge.batch_size
        self.asked = 0
        self._id = cache.register(judge.identity)

    def keys(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[str]:
        return [pair_key(self._id, p, *sorted((x, y))) for p, x, y in zip(prompts, a, b)]

    def cached_count(self, prompts, a, b) -> int:
        """How many of these pairs the cache already answers (identical pairs included)."""
        keys = self.keys(prompts, a, b)
        found = self.cache.get_many(keys)
        return sum(x == y or k in found for k, x, y in zip(keys, a, b))

    def __call__(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[float]:
        _check_lengths(prompts, a, b)
        keys = self.keys(prompts, a, b)
        found = self.cache.get_many(keys)
        todo: dict[str, tuple[str, str, str]] = {}  # each missing key asked once
        for key, p, x, y in zip(keys, prompts, a, b):
            if x != y and key not in found:
                todo.setdefault(key, (p, *sorted((x, y))))
        if todo:
            asked = list(todo.items())
            self.asked += len(asked)
            try:
                values = self.judge([q[0] for _, q in asked], [q[1] for _, q in asked],
                                    [q[2] for _, q in asked])
            except JudgeError as exc:  # keep what was answered before the failure
                self.cache.put_many({asked[i][0]: v for i, v in exc.answered.items()})
                raise
            values = checked_probabilities(values, len(asked), self.identity)
            new = {key: v for (key, _), v in zip(asked, values)}
            self.cache.put_many(new)
            found.update(new)
        out = []
        for key, x, y in zip(keys, a, b):
            if x == y:
                out.append(0.5)
            else:  # the cache holds P(the smaller text is better)
                p = found[key]
                out.append(p if x < y else 1.0 - p)
        return out


def checked_probabilities(values, count: int, identity: str) -> list[float]:
    """``values`` as floats in [0, 1], one per pair, or a ConfigError naming the judge."""
    values = list(values)
    if len(values) != count:
        raise ConfigError(f"the judge {identity[:80]!r} returned {len(values)} answers for "
                          f"{count} pairs", expected="one probability per pair")
    out = []
    for v in values:
        v = float(v)
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise ConfigError(f"the judge {identity[:80]!r} returned {v}",
                              expected="probabilities in [0, 1]")
        out.append(v)
    return out


def _check_lengths(prompts, a, b) -> None:
    if not len(prompts) == len(a) == len(b):
        raise ValueError(f"judge: {len(prompts)} prompts, {len(a)} first and {len(b)} second "
                         "completions (expected the same number of each)")
