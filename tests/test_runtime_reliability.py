"""The run directory's refusal rules, its lock, resume checks, signals and progress lines,
at the level of ``preflab.runtime`` (the trainers' end-to-end behaviour is in
tests/test_reliability.py)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys

import pytest

from preflab.errors import ConfigError
from preflab.runtime import rundir, signals
from preflab.runtime.progress import PlainProgress


def test_a_directory_of_other_files_is_refused_and_left_alone(tmp_path):
    (tmp_path / "README.md").write_text("my notes")
    with pytest.raises(ConfigError, match="holds other files and no preflab run"):
        rundir.prepare_run_dir(str(tmp_path), resume=False, overwrite=True)
    assert (tmp_path / "README.md").read_text() == "my notes"
    assert not (tmp_path / rundir.LOCK).exists()


def test_overwrite_removes_nothing_until_asked_and_a_symlinked_final_only_as_a_link(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("config: {}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "model.safetensors").write_text("weights")
    (run / "final").symlink_to(elsewhere, target_is_directory=True)
    rundir.prepare_run_dir(str(run), resume=False, overwrite=True)
    assert (run / "config.yaml").exists() and (run / "final").is_symlink()  # not yet
    rundir.clear_old_run(run)
    assert not (run / "config.yaml").exists() and not (run / "final").exists()
    assert (elsewhere / "model.safetensors").read_text() == "weights"  # the link's target stays
    rundir.release_lock(run)


def test_the_lock_refuses_a_second_live_run_and_replaces_a_dead_ones(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / rundir.LOCK).write_text(str(sleeper.pid))
        with pytest.raises(ConfigError, match=f"PID {sleeper.pid}"):
            rundir.prepare_run_dir(str(tmp_path), resume=False, overwrite=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    rundir.prepare_run_dir(str(tmp_path), resume=False, overwrite=False)  # the PID is gone
    assert (tmp_path / rundir.LOCK).read_text() == str(os.getpid())
    rundir.release_lock(tmp_path)
    assert not (tmp_path / rundir.LOCK).exists()


def test_an_output_dir_that_cannot_be_made_is_a_config_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot create"):
        rundir.prepare_run_dir(str(tmp_path / "file" / "run"), resume=False, overwrite=False)


def test_config_changes_lists_what_a_resume_may_not_change(tmp_path):
    rundir.write_config(tmp_path, {"data": "a.jsonl", "learning_rate": 1e-3, "log_every": 10,
                                   "max_steps": 100}, command="sft")
    new = {"data": "b.jsonl", "learning_rate": 1e-3, "log_every": 1, "max_steps": 200}
    assert rundir.config_changes(tmp_path, new, checkpoint_step=50) == [
        "data: 'a.jsonl' -> 'b.jsonl'"]
    assert rundir.config_changes(tmp_path, {**new, "data": "a.jsonl", "max_steps": 40},
                                 checkpoint_step=50) == [
        "max_steps: 40 is below the checkpoint's step 50"]


def test_the_first_signal_sets_the_flag_and_is_restored_after():
    before = signal.getsignal(signal.SIGTERM)
    with signals.graceful_stop():
        assert signals.requested_signal() is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.requested_signal() == signal.SIGTERM
        error = signals.interrupted(signal.SIGTERM, 7, "run/checkpoints/step-7")
        assert error.exit_code == 143 and "--resume" in str(error)
    assert signal.getsignal(signal.SIGTERM) == before
    assert signals.requested_signal() is None


def test_a_second_signal_ends_the_process_at_once():
    code = ("import os, signal, time\n"
            "from preflab.runtime import signals\n"
            "with signals.graceful_stop():\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    time.sleep(5)\n"
            "print('not reached')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode in (-signal.SIGINT, 130) and "not reached" not in result.stdout
    assert "send SIGINT again to stop at once" in result.stderr


def test_plain_progress_prints_a_line_every_tenth():
    out = io.StringIO()
    bar = PlainProgress(total=200, desc="dpo", file=out)
    for _ in range(200):
        bar.set_postfix_str("loss=0.5")
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    assert lines[0].startswith("dpo: 10% (20/200 steps) loss=0.5 [")
    assert lines[-1].startswith("dpo: 100% (200/200 steps)")
    resumed = io.StringIO()
    bar = PlainProgress(total=200, initial=150, desc="dpo", file=resumed)
    for _ in range(50):
        bar.update(1)
    assert [x.split(" (")[0] for x in resumed.getvalue().splitlines()] == [
        "dpo: 80%", "dpo: 90%", "dpo: 100%"]


def test_adamw_moments_allocated_up_front_give_the_lazy_update():
    """``build_optimizer`` allocates AdamW's moments before any step (a compact heap); the
    first steps then give the parameters and state a lazily initialised AdamW gives, bit for
    bit."""
    import torch

    from preflab.runtime.optim import build_optimizer

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5),
                                   torch.nn.Linear(5, 1))

    ours, lazy = model(), model()
    optimizer = build_optimizer(ours, learning_rate=1e-2, weight_decay=0.1)
    assert all(torch.equal(optimizer.state[p]["exp_avg"], torch.zeros_like(p))
               for p in ours.parameters())
    groups = [{"params": [p for p in lazy.parameters() if p.ndim >= 2], "weight_decay": 0.1},
              {"params": [p for p in lazy.parameters() if p.ndim < 2], "weight_decay": 0.0}]
    reference = torch.optim.AdamW(groups, lr=1e-2)
    assert not reference.state
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    for net, opt in ((ours, optimizer), (lazy, reference)):
        for _ in range(3):
            net(x).square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for a, b in zip(ours.parameters(), lazy.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(optimizer.state.values(), reference.state.values()):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
