"""Running the compared jobs: each in a fresh process, reused when finished, never fatal.

A ``Job`` is one command line (an ordinary ``preflab`` command, or one of compare's small
data and scoring steps) with the jobs it needs. ``Harness.run`` starts each job once every
job it needs has finished, at most ``jobs`` at a time, in a new process group whose output
goes to ``CMP/logs/<key>.log``. Per job it records in ``CMP/jobs.json``: the status (done,
failed, timed out, skipped because a job it needs did not finish), wall and CPU seconds and
the peak RSS of the process (``os.wait4``), the exit code and the last lines of its log.

- A job whose output is already complete and whose recorded command is the same is reused,
  with the figures recorded when it ran (so a second ``make demo`` reports the first run's
  timings); ``fresh=True`` redoes everything.
- A job that runs past its time budget is stopped (SIGTERM, then SIGKILL) and recorded
  as timed out (``time_budget_s``; 0: ``BUDGET_FACTOR`` times the job's expected time, at
  least ``MIN_BUDGET_S``); a failed job is recorded and shown, and only the jobs that need it are
  skipped.
- ``dry_run`` prints every command, in an order that respects the dependencies, so they can
  be sent to a scheduler instead.
- Each job's start (when the output is not a terminal) and end are printed; on a terminal a
  live line shows the jobs running, their elapsed time and an ETA (``progress=False``
  hides it).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from preflab.algorithms import registry
from preflab.runtime.signals import Interrupted, requested_signal

# Seconds a job of each kind takes with the built-in world's settings on 2 CPU cores; the
# ETA uses these until jobs of the same kind have finished in this session. A training
# method's comes from its declaration (``preflab.algorithms``: ``Method.prior_seconds``); these
# are compare's own jobs. A preset may bring its own (measured for the model size it was made
# for); either is scaled by the compared model's parameters over that size (``time_scale``).
JOB_SECONDS = {"world": 10, "pairs": 25, "relabel": 4, "data": 3, "score": 10}
PRIOR_SECONDS = {**JOB_SECONDS, **{m.name: m.prior_seconds for m in registry().values()}}
TRAINING_COMMANDS = tuple(registry())
"""The jobs that train (``--launcher`` prefixes them): every registered method."""
MIN_BUDGET_S, BUDGET_FACTOR = 3600.0, 5.0


@dataclass
class Job:
    key: str
    words: list[str]
    """The command after the program: ``["dpo", "--model", ...]`` for ``preflab dpo``, or
    ``["-m", "preflab.compare.score", ...]`` for a module."""
    done: Path
    """Exists once the job has finished (a run's ``summary.json``, an output file)."""
    after: list[str] = field(default_factory=list)
    kind: str = ""
    """Command name for the ETA and the report: sft, dpo, rm, ppo, score, data, ..."""
    meta: dict = field(default_factory=dict)

    @property
    def is_module(self) -> bool:
        """Run by the interpreter (``-m module ...``, ``-c code``), not as a preflab command."""
        return bool(self.words) and self.words[0].startswith("-")


@dataclass
class JobRecord:
    status: str  # done | failed | timeout | skipped | interrupted
    command: list[str]
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_bytes: int = 0
    exit_code: int | None = None
    error: str = ""
    log: str = ""
    finished_at: float = 0.0
    threads: int = 0
    reused: bool = False

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "reused"}


def command_line(job: Job, launcher: str = "", python: str | None = None) -> list[str]:
    """The argv to run ``job``: ``python -m preflab.cli ...`` (or the launcher's prefix)."""
    python = python or sys.executable
    if job.is_module:
        return [python, *job.words]
    if launcher and job.kind in TRAINING_COMMANDS:
        return [*shlex.split(launcher), "-m", "preflab.cli", *job.words]
    return [python, "-m", "preflab.cli", *job.words]


def display_line(job: Job, launcher: str = "") -> str:
    """The command as a user would type it (``preflab dpo ...``)."""
    if job.is_module:
        words = ["python", *job.words]
    elif launcher and job.kind in TRAINING_COMMANDS:
        words = [*shlex.split(launcher), "-m", "preflab.cli", *job.words]
    else:
        words = ["preflab", *job.words]
    return shlex.join(words)


def order(jobs: dict[str, Job]) -> list[str]:
    """Keys in an order where every job comes after the jobs it needs."""
    seen: dict[str, bool] = {}
    out: list[str] = []

    def visit(key: str, path: tuple[str, ...]) -> None:
        if seen.get(key):
            return
        if key in path:
            raise ValueError(f"dependency cycle: {' -> '.join(path + (key,))}")
        for dep in jobs[key].after:
            if dep not in jobs:
                raise ValueError(f"job {key} needs unknown job {dep}")
            visit(dep, path + (key,))
        seen[key] = True
        out.append(key)

    for key in jobs:
        visit(key, ())
    return out


def _fmt(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Harness:
    def __init__(self, root: Path, jobs: dict[str, Job], *, parallel: int = 1,
                 launcher: str = "", time_budget_s: float = 0, fresh: bool = False,
                 threads_per_job: int = 0, cores: int = 0, progress: bool = True,
                 on_finish: Callable[[str, JobRecord], None] | None = None,
                 prior_seconds: dict[str, float] | None = None, time_scale: float = 1.0) -> None:
        self.root, self.jobs = root, jobs
        self.prior_seconds, self.time_scale = prior_seconds or PRIOR_SECONDS, time_scale
        self.parallel = max(1, parallel)
        self.launcher, self.time_budget_s, self.fresh = launcher, time_budget_s, fresh
        self.threads_per_job = threads_per_job
        self.cores = cores
        self.tty = progress and sys.stderr.isatty()
        self.on_finish = on_finish
        self.records_file = root / "jobs.json"
        self.records: dict[str, JobRecord] = {}
        self._previous = self._load_records()
        self._running: dict[str, tuple] = {}

    # --- records ----------------------------------------------------------------------------
    def _load_records(self) -> dict[str, dict]:
        if self.fresh or not self.records_file.is_file():
            return {}
        try:
            return json.loads(self.records_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}

    def _save_records(self) -> None:
        data = {**self._previous, **{k: r.as_dict() for k, r in self.records.items()}}
        tmp = self.records_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        tmp.replace(self.records_file)

    def _reusable(self, job: Job) -> JobRecord | None:
        if self.fresh or not job.done.exists():
            return None
        old = self._previous.get(job.key)
        if old is not None and old.get("command") != job.words:
            return None  # the settings changed since: run again
        if old is not None and old.get("status") == "done":
            record = JobRecord(**{k: v for k, v in old.items() if k in JobRecord.__dataclass_fields__})
        else:
            record = JobRecord("done", job.words)  # finished outside this harness
        record.reused = True
        return record

    # --- running ------------------------------------------------------------------------------
    def dry_run(self, out=None) -> None:
        out = out or sys.stdout
        for key in order(self.jobs):
            job = self.jobs[key]
            state = "  # done, would be reused" if self._reusable(job) else ""
            print(display_line(job, self.launcher) + state, file=out)

    def _threads(self, ready: int) -> int:
        """CPU threads for a job starting now: ``threads_per_job`` if set, else the cores
        shared by the jobs that can run at once (a job that runs alone gets them all)."""
        if self.threads_per_job or not self.cores:
            return self.threads_per_job
        return max(1, self.cores // max(1, min(self.parallel, len(self._running) + ready)))

    def _env(self, threads: int) -> dict:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        return env

    def _restart_flags(self, job: Job) -> list[str]:
        """What an earlier attempt left in the job's output: continue it (``--resume``) when it
        ran the same command and left a run, else replace it (``--overwrite``)."""
        output = job.meta.get("output")
        if not output or not _non_empty(Path(output)):
            return []
        from preflab.runtime.rundir import holds_run

        old = self._previous.get(job.key)
        same = old is None or old.get("command") == job.words
        if job.meta.get("resume") and same and holds_run(Path(output)):
            return [job.meta["resume"]]
        return [job.meta["overwrite"]] if job.meta.get("overwrite") else []

    def _start(self, key: str, ready: int = 1) -> None:
        job = self.jobs[key]
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{key}.log"
        log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 (closed in _reap)
        argv = command_line(job, self.launcher)
        argv += self._restart_flags(job)
        threads = self._threads(ready)
        log.write(f"$ OMP_NUM_THREADS={threads or 'unset'} {shlex.join(argv)}\n")
        log.flush()
        import subprocess

        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                env=self._env(threads), cwd=os.getcwd(), start_new_session=True)
        self._running[key] = (proc, time.perf_counter(), log, log_path, threads)
        if not self.tty:
            print(f"[{self._position()}] start {key}", file=sys.stderr, flush=True)

    def _stop(self, proc) -> None:
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.time() + wait
            while time.time() < deadline:
                if proc.poll() is not None:
                    return
                time.sleep(0.1)

    def _reap(self, key: str) -> bool:
        """Record ``key`` if its process has ended (or overran its budget); True if so."""
        proc, started, log, log_path, threads = self._running[key]
        elapsed = time.perf_counter() - started
        timed_out = False
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status, usage = proc.pid, 0, None
        if pid == 0:
            if elapsed <= self.budget(key):
                return False
            self._stop(proc)
            timed_out = True
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            except ChildProcessError:
                status, usage = 0, None
        proc.returncode = os.waitstatus_to_exitcode(status) if pid else proc.returncode
        log.close()
        del self._running[key]
        code = proc.returncode if not timed_out else None
        job = self.jobs[key]
        # SIGTERM or SIGINT ends a job with 143 or 130 at a step boundary, or, where it arrives
        # outside the trainer's handler (starting up, exiting, a score or data step), kills it
        # (-15, -2). Either way the job was stopped, not broken; and one that had written its
        # output (the outputs are written atomically) had finished.
        stopped = code in (130, 143, -signal.SIGINT, -signal.SIGTERM)
        record = JobRecord(
            status="timeout" if timed_out else ("done" if (code == 0 or stopped)
                                                and job.done.exists()
                                                else "interrupted" if stopped
                                                else "failed"),
            command=job.words, wall_s=round(elapsed, 2), exit_code=code,
            cpu_s=round(usage.ru_utime + usage.ru_stime, 2) if usage else 0.0,
            peak_rss_bytes=int(usage.ru_maxrss * 1024) if usage else 0,
            log=str(log_path.relative_to(self.root)), finished_at=time.time(), threads=threads)
        if record.status == "timeout":
            record.error = f"stopped after the time budget of {self.budget(key):.0f} s"
        elif record.status == "failed":
            record.error = _last_lines(log_path) or f"exit code {code}"
        self._finish(key, record)
        return True

    def _finish(self, key: str, record: JobRecord) -> None:
        self.records[key] = record
        self._save_records()
        if self.on_finish:
            self.on_finish(key, record)
        what = {"done": "done", "failed": "FAILED", "timeout": "TIMED OUT",
                "skipped": "skipped", "interrupted": "interrupted"}[record.status]
        output = self.jobs[key].meta.get("output") if key in self.jobs else None
        if record.status == "interrupted" and record.exit_code in (130, 143) and output \
                and (Path(output) / "checkpoints").is_dir():
            what += " (checkpoint written)"
        if record.reused:
            what = "reused (finished earlier)"
        extra = f" in {_fmt(record.wall_s)}" if record.status != "skipped" and not record.reused else ""
        line = f"[{self._position()}] {key}: {what}{extra}"
        if record.status in ("failed", "timeout", "skipped", "interrupted") and record.error:
            line += " -- " + record.error.strip().splitlines()[-1][:200]
        self._clear()
        print(line, file=sys.stderr, flush=True)

    def _position(self) -> str:
        width = len(str(len(self.jobs)))
        return f"{len(self.records):>{width}}/{len(self.jobs)}"

    def prior(self, kind: str) -> float:
        """Expected seconds of a job of ``kind`` before any has run: the prior, scaled."""
        return self.prior_seconds.get(kind, PRIOR_SECONDS.get(kind, 30)) * self.time_scale

    def budget(self, key: str) -> float:
        """Seconds job ``key`` may run before it is stopped."""
        if self.time_budget_s > 0:
            return self.time_budget_s
        return max(MIN_BUDGET_S, BUDGET_FACTOR * self.prior(self.jobs[key].kind))

    def _estimate(self, key: str) -> float:
        kind = self.jobs[key].kind
        same = [r.wall_s for k, r in self.records.items()
                if self.jobs[k].kind == kind and r.status == "done" and not r.reused]
        return sum(same) / len(same) if same else self.prior(kind)

    def _clear(self) -> None:
        if self.tty:
            print("\r\033[K", end="", file=sys.stderr, flush=True)

    def _status_line(self) -> None:
        if not self.tty:
            return
        now = time.perf_counter()
        running = ", ".join(f"{k} {_fmt(now - v[1])}" for k, v in self._running.items())
        pending = [k for k in self.jobs if k not in self.records and k not in self._running]
        left = sum(self._estimate(k) for k in pending)
        left += sum(max(self._estimate(k) - (now - v[1]), 0) for k, v in self._running.items())
        failed = sum(r.status != "done" for r in self.records.values())
        line = (f"[{self._position()}] running {running or '-'}"
                + (f" | {failed} did not finish" if failed else "")
                + f" | ETA {_fmt(left / self.parallel)}")
        try:
            width = os.get_terminal_size(sys.stderr.fileno()).columns
        except OSError:
            width = 0
        width = width if width >= 40 else 120
        print("\r\033[K" + line[: width - 1], end="", file=sys.stderr, flush=True)

    def _interrupt(self) -> None:
        """SIGTERM or SIGINT: pass it on to the running jobs, which checkpoint and stop, wait
        for them, record them, and stop (a re-run continues where they stopped)."""
        signum = requested_signal()
        self._clear()
        print(f"passing {signal.Signals(signum).name} on to {len(self._running)} running "
              "jobs; they write a checkpoint and stop", file=sys.stderr, flush=True)
        for proc, *_ in self._running.values():
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:
                pass
        deadline = time.time() + 600
        while self._running and time.time() < deadline:
            for key in list(self._running):
                self._reap(key)
            time.sleep(0.2)
        for proc, *_ in list(self._running.values()):
            self._stop(proc)
        raise Interrupted("stopped by a signal; finished runs are kept and interrupted ones "
                          "wrote a checkpoint. Run the same command again to continue.",
                          signum=signum)

    def run(self) -> dict[str, JobRecord]:
        self.root.mkdir(parents=True, exist_ok=True)
        pending = order(self.jobs)
        try:
            while pending or self._running:
                ready = [k for k in pending if all(
                    self.records.get(d) is not None for d in self.jobs[k].after)]
                for key in list(pending):
                    job = self.jobs[key]
                    needs = [self.records.get(d) for d in job.after]
                    if any(r is None for r in needs):
                        continue  # a job it needs has not finished yet
                    pending.remove(key)
                    bad = [d for d, r in zip(job.after, needs) if r.status != "done"]
                    if bad:
                        self._finish(key, JobRecord("skipped", job.words,
                                                    error=f"needs {', '.join(bad)}, which did "
                                                          "not finish"))
                        continue
                    reused = self._reusable(job)
                    if reused is not None:
                        self._finish(key, reused)
                        continue
                    if len(self._running) >= self.parallel:
                        pending.insert(0, key)
                        break
                    self._start(key, ready=len([k for k in ready if k in pending]) + 1)
                for key in list(self._running):
                    self._reap(key)
                if requested_signal() is not None:
                    self._interrupt()
                self._status_line()
                if self._running:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            for proc, *_rest in list(self._running.values()):
                self._stop(proc)
            self._clear()
            raise
        self._clear()
        return self.records


def _non_empty(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _last_lines(path: Path, n: int = 6) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])
