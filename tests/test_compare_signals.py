"""`preflab compare` stopped by SIGTERM mid-run, end to end: the signal reaches the running
jobs, the PPO job checkpoints at an iteration boundary and is recorded as interrupted, compare
exits 143 leaving no process behind, and the same command run again continues the job with
--resume and finishes the comparison. And the harness alone: how it records jobs that the
signal it passed on ended in each way."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from preflab.compare.harness import Harness, Job
from preflab.runtime.signals import Interrupted, graceful_stop
from tests.conftest import tiny_config

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                reason="reads the process table from /proc")

PPO_STEPS = 8


def processes() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, parent pid, session id) of every process in /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # it ended while we looked
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        table[int(entry)] = (fields[0], int(fields[1]), int(fields[3]))
    return table


def living_in_sessions(sessions: set[int]) -> list[int]:
    return [pid for pid, (state, _, sid) in processes().items()
            if sid in sessions and state != "Z"]


def living_with_argument(text: str) -> list[int]:
    """Processes whose command line mentions ``text`` (a path only compare's jobs name)."""
    found = []
    for pid, (state, _, _) in processes().items():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in argv and state != "Z":
            found.append(pid)
    return found


def training_rows(run_dir: Path) -> list[dict]:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            continue
    return [r for r in rows if r.get("step", 0) >= 1 and "loss" in r]


def test_sigterm_stops_compare_at_a_checkpoint_and_a_rerun_resumes(tiny_world, tmp_path):
    # PPO gets enough iterations, each logged, to be caught mid-run; only the RLHF road runs
    # (plus the quick preset's two short probes) to keep the test short.
    config = tiny_config(tmp_path / "sig.yaml",
                         ppo={"max_steps": PPO_STEPS, "log_every": 1, "eval_every": 0})
    out = tmp_path / "cmp"
    command = [sys.executable, "-m", "preflab.cli", "compare", "--world", str(tiny_world),
               "--output-dir", str(out), "--preset", "quick", "--methods", "ppo", "--config",
               str(config)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ppo = out / "runs" / "ppo-s0"

    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True)
    try:
        deadline = time.time() + 240
        while not training_rows(ppo):
            assert proc.poll() is None, f"compare ended before PPO ran:\n{proc.communicate()}"
            assert time.time() < deadline, "PPO did not start within 4 minutes"
            time.sleep(0.05)
        assert not (ppo / "summary.json").exists(), "PPO finished before it could be stopped"
        # The harness starts each job in a session of its own: remember them all.
        sessions = {sid for pid, (state, ppid, sid) in processes().items() if ppid == proc.pid}
        assert sessions
        proc.send_signal(signal.SIGTERM)  # compare only, not the jobs
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert re.search(r"passing SIGTERM on to [1-9]\d* running jobs; they write a checkpoint",
                     stderr), stderr
    assert "ppo-s0: interrupted (checkpoint written)" in stderr
    assert "Run the same command again to continue" in stderr
    assert living_in_sessions(sessions) == []  # the jobs it had running, and their children
    assert living_with_argument(str(out)) == []  # any job at all
    assert not (out / "results.json").exists()  # it stopped instead of reporting

    # PPO stopped at an iteration boundary with a checkpoint, before its last iteration.
    checkpoints = sorted((ppo / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 1, checkpoints
    stopped_at = int(checkpoints[0].name.split("-")[1])
    assert 1 <= stopped_at < PPO_STEPS
    assert not (ppo / "final").exists() and not (ppo / "summary.json").exists()
    log = (out / "logs" / "ppo-s0.log").read_text()
    assert "SIGTERM received" in log and f"stopped by SIGTERM after step {stopped_at}" in log

    records = json.loads((out / "jobs.json").read_text())
    assert records["ppo-s0"]["status"] == "interrupted"
    assert records["ppo-s0"]["exit_code"] == 143
    # Every job that ended is done or interrupted: the signal is no job's failure.
    assert {k: r["status"] for k, r in records.items()
            if r["status"] not in ("done", "interrupted")} == {}
    finished = {k for k, r in records.items() if r["status"] == "done"}
    assert {"sft", "pairs", "rm-s0"} <= finished

    # The same command again: finished jobs are reused, PPO continues from its checkpoint.
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    for key in ("sft", "pairs", "rm-s0"):
        assert f"{key}: reused (finished earlier)" in again.stderr
    log = (out / "logs" / "ppo-s0.log").read_text()
    first = log.splitlines()[0]
    assert first.startswith("$ ") and first.split()[-1] == "--resume", first
    assert "--overwrite" not in first
    assert f"resumed from {checkpoints[0]} (step {stopped_at})" in log
    assert (ppo / "final").is_dir() and (ppo / "summary.json").is_file()
    steps = [r["step"] for r in training_rows(ppo)]
    assert steps == list(range(1, PPO_STEPS + 1))  # each iteration once, none lost or redone

    records = json.loads((out / "jobs.json").read_text())
    assert all(r["status"] == "done" for r in records.values()), records
    results = json.loads((out / "results.json").read_text())
    ppo_run = next(r for r in results["runs"] if r["method"] == "ppo")
    assert ppo_run["status"] == "done"


def test_the_harness_records_what_the_signal_it_passed_on_did_to_each_job(tmp_path):
    """A job that stops on the signal (143) and one the signal kills (-15: no handler, as in
    a job still starting up) were interrupted; one that had written its output when the
    signal killed it (on its way out) had finished. None of them failed."""
    ready = tmp_path / "ready"
    ready.mkdir()

    def job(key: str, code: str) -> Job:
        started = f"open({str(ready / key)!r}, 'w').close()"
        return Job(key, ["-c", f"import signal, sys, time\n{code}\n{started}\ntime.sleep(60)"],
                   tmp_path / f"{key}.done", kind="test")

    jobs = {
        "graceful": job("graceful", "signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))"),
        "killed": job("killed", "pass"),
        "finished": job("finished", f"open({str(tmp_path / 'finished.done')!r}, 'w').close()"),
    }

    cancel = threading.Event()

    def send_when_all_started() -> None:
        deadline = time.time() + 60
        while len(list(ready.iterdir())) < len(jobs) and time.time() < deadline:
            if cancel.wait(0.05):
                return  # the harness ended first: never signal the test process then
        os.kill(os.getpid(), signal.SIGTERM)  # caught by graceful_stop, like compare's main

    harness = Harness(tmp_path / "h", jobs, parallel=3, progress=False)
    sender = threading.Thread(target=send_when_all_started, daemon=True)
    with graceful_stop(), pytest.raises(Interrupted) as stop:
        sender.start()
        try:
            harness.run()
        finally:
            cancel.set()
            sender.join()
    assert stop.value.exit_code == 143
    records = json.loads((tmp_path / "h" / "jobs.json").read_text())
    assert {k: (r["status"], r["exit_code"]) for k, r in records.items()} == {
        "graceful": ("interrupted", 143), "killed": ("interrupted", -15),
        "finished": ("done", -15)}
    assert records["finished"]["wall_s"] > 0
    # a second harness reuses the finished job, with the figures of the run that made it
    assert harness.jobs["finished"].done.exists()
    assert Harness(tmp_path / "h", jobs)._reusable(jobs["finished"]).wall_s == \
        records["finished"]["wall_s"]
