"""No lost work and no silent garbage, end to end through ``preflab <command>``: a signal stops
each trainer at a step boundary with a checkpoint and ``--resume`` gives the weights of an
uninterrupted run bit for bit; a NaN or infinite loss, gradient or reward stops the run
naming the step and writes no ``final/``; a resume with other settings is refused; a bad
``--overwrite`` costs nothing; two runs never share a directory.

Each command here runs on the tiny random Llama for a few seconds; the signal tests run the
interrupted command in a child process, the rest in this one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from preflab.cli import main
from preflab.runtime import rundir
from tests.sft_data import sft_records, write_jsonl
from tests.test_dpo import pair_records
from tests.test_ppo import REWARD_FILE
from tests.test_rm import preference_records

COMMON = ["--no-progress", "--log-every", "1", "--max-length", "32", "--eval-fraction", "0.2",
          "--learning-rate", "3e-3"]
# Per command: its own flags, and steps enough that a signal lands mid-run.
SETTINGS = {
    "sft": ["--batch-size", "4", "--max-steps", "400"],
    "rm": ["--batch-size", "4", "--max-steps", "300"],
    "dpo": ["--batch-size", "4", "--max-steps", "300"],
    "ppo": ["--rollout-batch-size", "4", "--num-minibatches", "2", "--ppo-epochs", "1",
            "--batch-size", "4", "--response-length", "4", "--max-steps", "120",
            "--eval-num-prompts", "4"],
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, list[str]]:
    """Per command: the data flags (and PPO's reward)."""
    root = tmp_path_factory.mktemp("reliability-data")
    prompts = [{"prompt": f"{d} {n} was"} for d in ("the", "a", "this", "that")
               for n in ("movie", "film", "plot", "story", "acting")]
    (root / "rewards.py").write_text(REWARD_FILE + NAN_REWARD)
    return {
        "sft": ["--data", str(write_jsonl(root / "sft.jsonl", sft_records(128)))],
        "rm": ["--data", str(write_jsonl(root / "rm.jsonl", preference_records(96)))],
        "dpo": ["--data", str(write_jsonl(root / "dpo.jsonl", pair_records(96)))],
        "ppo": ["--data", str(write_jsonl(root / "prompts.jsonl", prompts)),
                "--reward", f"{root / 'rewards.py'}:positive"],
        "nan_reward": [f"{root / 'rewards.py'}:nan_from_third_call"],
    }


NAN_REWARD = '''
CALLS = []


def nan_from_third_call(prompts, completions, **kwargs):
    CALLS.append(1)
    return [float("nan") if len(CALLS) >= 3 else 0.1 * len(c) for c in completions]
'''


def argv(command: str, model: Path, inputs: dict, out: Path, *extra: str) -> list[str]:
    return [command, "--model", str(model), *inputs[command], "--output-dir", str(out),
            *COMMON, *SETTINGS[command], *extra]


def weights(run: Path) -> dict[str, torch.Tensor]:
    name = "model.safetensors"
    return load_file(run / "final" / name)


def logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines()
            if line.strip().endswith("}")]


# --- signals ----------------------------------------------------------------------------------

@pytest.mark.parametrize("command, signum", [
    ("sft", signal.SIGTERM), ("rm", signal.SIGINT), ("dpo", signal.SIGTERM),
    ("ppo", signal.SIGINT),
])
def test_a_signal_checkpoints_at_a_step_and_resume_matches_an_uninterrupted_run(
        command, signum, tiny_model_dir, inputs, tmp_path, capsys):
    """With the default --save-every 0, a signal at a random step still loses nothing."""
    full = tmp_path / "full"
    assert main(argv(command, tiny_model_dir, inputs, full)) == 0

    at = random.Random().randrange(3, 30)  # the step after which the signal is sent
    out = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "preflab.cli",
                             *argv(command, tiny_model_dir, inputs, out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while max(logged_steps(out), default=0) < at:
        assert proc.poll() is None, f"{command} ended before step {at}: {proc.stderr.read()}"
        assert time.time() < deadline, f"{command} did not reach step {at}"
        time.sleep(0.002)
    # A second run into the same directory is refused while the first holds it.
    assert main(argv(command, tiny_model_dir, inputs, out, "--overwrite")) == 2
    assert f"PID {proc.pid}" in capsys.readouterr().err
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)

    assert proc.returncode == 128 + signum, (at, stderr[-2000:])
    assert "Traceback" not in stderr and "--resume" in stderr, stderr[-2000:]
    assert not (out / "final").exists(), f"signalled at step {at}: too late to test resuming"
    checkpoints = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and checkpoints[0] >= at, (at, checkpoints)
    assert f"after step {checkpoints[0]}" in stderr
    assert not (out / rundir.LOCK).exists()

    assert main(argv(command, tiny_model_dir, inputs, out, "--resume")) == 0
    assert f"resumed from {out / 'checkpoints' / f'step-{checkpoints[0]}'}" in capsys.readouterr().out
    got, want = weights(out), weights(full)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), (key, at, checkpoints[0])


# --- NaN and infinity -------------------------------------------------------------------------

def assert_diverged(out: Path, err: str, where: str, last_good: int) -> None:
    assert "Traceback" not in err and f"diverged at {where}" in err, err
    assert not (out / "final").exists()
    assert f"Last good checkpoint: {out / 'checkpoints' / f'step-{last_good}'}" in err
    saved = load_file(out / "checkpoints" / f"step-{last_good}" / "policy" / "model.safetensors") \
        if (out / "checkpoints" / f"step-{last_good}" / "policy").exists() else None
    if saved is not None:
        assert all(bool(torch.isfinite(t).all()) for t in saved.values())


def test_a_huge_learning_rate_stops_at_the_first_nonfinite_step(tiny_model_dir, inputs, tmp_path,
                                                                 capsys):
    out = tmp_path / "run"
    code = main(argv("sft", tiny_model_dir, inputs, out, "--learning-rate", "1e30",
                     "--max-steps", "40", "--save-every", "1", "--warmup-steps", "0"))
    assert code == 1
    err = capsys.readouterr().err
    step = int(err.split("diverged at step ")[1].split(":")[0])
    assert step >= 2  # step 1 is computed on the starting weights: finite
    assert_diverged(out, err, f"step {step}", step - 1)
    assert not (out / rundir.LOCK).exists()


@pytest.mark.parametrize("command", ["sft", "rm", "dpo"])
def test_a_nan_gradient_stops_the_run_or_is_skipped(command, tiny_model_dir, inputs, tmp_path,
                                                    capsys, monkeypatch):
    """A NaN injected into one parameter's gradient at step 3."""
    from preflab.training import session

    original = session.optimizer_step

    def poisoned(model, optimizer, scheduler, max_grad_norm, *, run=None, step=0, loss=None):
        if step == 3:
            params = [p for p in (model.parameters() if isinstance(model, torch.nn.Module)
                                  else model) if p.grad is not None]
            params[0].grad.view(-1)[0] = float("nan")
        return original(model, optimizer, scheduler, max_grad_norm, run=run, step=step, loss=loss)

    monkeypatch.setattr(session, "optimizer_step", poisoned)
    out = tmp_path / "stop"
    assert main(argv(command, tiny_model_dir, inputs, out, "--max-steps", "6",
                     "--save-every", "2")) == 1
    err = capsys.readouterr().err
    assert "grad_norm nan" in err
    assert_diverged(out, err, "step 3", 2)

    skipped = tmp_path / "skip"
    assert main(argv(command, tiny_model_dir, inputs, skipped, "--max-steps", "6",
                     "--nonfinite", "skip")) == 0
    assert "step 3 skipped" in capsys.readouterr().err
    summary = json.loads((skipped / "summary.json").read_text())
    assert summary["skipped_nonfinite_steps"] == 1
    assert all(bool(torch.isfinite(t).all()) for t in weights(skipped).values())


def test_a_nan_reward_stops_ppo_naming_the_iteration(tiny_model_dir, inputs, tmp_path, capsys):
    out = tmp_path / "run"
    args = argv("ppo", tiny_model_dir, inputs, out, "--max-steps", "6", "--save-every", "1")
    args[args.index("--reward") + 1] = inputs["nan_reward"][0]
    # The evaluation at step 0 scores with the training reward too: calls 1 (eval), 2 (it 1),
    # 3 (iteration 2) -> NaN.
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "nan_from_third_call" in err and "returned nan" in err
    assert_diverged(out, err, "iteration 2 (scoring the rollout)", 1)


def test_ppo_with_a_huge_learning_rate_ends_with_a_message_not_a_torch_traceback(
        tiny_model_dir, inputs, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(argv("ppo", tiny_model_dir, inputs, out, "--learning-rate", "1e30",
                     "--max-steps", "5")) == 1
    err = capsys.readouterr().err
    assert "diverged at iteration" in err and "Traceback" not in err
    assert "probability tensor" not in err
    assert not (out / "final").exists()


@pytest.mark.parametrize("flags, field", [
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--beta", "inf"], "--beta"),
    (["--max-grad-norm", "-5"], "--max-grad-norm"),
    (["--adam-beta1", "1.5"], "--adam-beta1"),
])
def test_values_that_would_diverge_are_refused_up_front(flags, field, tiny_model_dir, inputs,
                                                        tmp_path, capsys):
    out = tmp_path / "run"
    assert main(argv("dpo", tiny_model_dir, inputs, out, *flags)) == 2
    err = capsys.readouterr().err
    assert field in err and "must be" in err and "Traceback" not in err
    assert not out.exists()


# --- resume checks ----------------------------------------------------------------------------

def test_resume_refuses_other_settings_and_accepts_the_declared_ones(tiny_model_dir, inputs,
                                                                     tmp_path, capsys):
    out = tmp_path / "run"
    first = argv("sft", tiny_model_dir, inputs, out, "--max-steps", "6", "--save-every", "3")
    assert main(first) == 0
    before = (out / "config.yaml").read_text()
    other = tmp_path / "other.jsonl"
    other.write_text((Path(inputs["sft"][1])).read_text())
    changed = argv("sft", tiny_model_dir, {"sft": ["--data", str(other)]}, out, "--max-steps", "6",
                   "--save-every", "3", "--learning-rate", "1e-3", "--batch-size", "2", "--resume")
    assert main(changed) == 2
    err = capsys.readouterr().err
    for field in ("data:", "learning_rate: 0.003 -> 0.001", "batch_size: 4 -> 2"):
        assert field in err, err
    assert (out / "config.yaml").read_text() == before

    # Logging cadence and a larger --max-steps may change; the config records the new values.
    assert main(argv("sft", tiny_model_dir, inputs, out, "--max-steps", "9", "--save-every", "3",
                     "--log-every", "2", "--resume")) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())["config"]
    assert config["max_steps"] == 9 and config["log_every"] == 2
    assert json.loads((out / "summary.json").read_text())["steps"] == 9


def test_ppo_resume_counts_every_iteration_and_refuses_fewer(tiny_model_dir, inputs, tmp_path,
                                                             capsys):
    out = tmp_path / "run"
    assert main(argv("ppo", tiny_model_dir, inputs, out, "--max-steps", "4",
                     "--save-every", "2")) == 0
    assert main(argv("ppo", tiny_model_dir, inputs, out, "--max-steps", "1", "--resume")) == 2
    assert "max_steps: 1 is below the checkpoint's step 2" in capsys.readouterr().err
    assert main(argv("ppo", tiny_model_dir, inputs, out, "--max-steps", "6", "--resume")) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 6
    assert "ppo: 6 iterations" in capsys.readouterr().out


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_the_start(tiny_model_dir, inputs,
                                                                          tmp_path, capsys):
    out = tmp_path / "run"
    args = argv("sft", tiny_model_dir, inputs, out, "--max-steps", "4")
    assert main([*args, "--learning-rate", "1e30"]) == 1  # diverges: no checkpoint, no final/
    capsys.readouterr()
    assert main(args) == 2  # a plain re-run: the directory holds a run
    assert "--resume" in capsys.readouterr().err
    # --resume with the lower learning rate is a changed setting, so take the same one and skip.
    assert main([*args, "--learning-rate", "1e30", "--nonfinite", "skip", "--resume"]) == 0
    assert "starting it again from step 0" in capsys.readouterr().out
    assert logged_steps(out).count(0) == 1  # the restarted run's log replaced the old one


# --- overwrite and the run directory ----------------------------------------------------------

def test_overwrite_with_bad_input_keeps_the_previous_run(tiny_model_dir, inputs, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(argv("sft", tiny_model_dir, inputs, out, "--max-steps", "2")) == 0
    kept = weights(out)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": 3}\n')
    for data in (str(bad), str(tmp_path / "typo.jsonl")):
        assert main(argv("sft", tiny_model_dir, {"sft": ["--data", data]}, out, "--max-steps", "2",
                         "--overwrite")) == 2
        assert "Traceback" not in capsys.readouterr().err
        assert (out / "summary.json").exists()
        assert all(torch.equal(kept[k], v) for k, v in weights(out).items())
        assert not (out / rundir.LOCK).exists()

    # A symlinked final/ is replaced as a link: what it points to stays.
    elsewhere = tmp_path / "elsewhere"
    (out / "final").rename(elsewhere)
    (out / "final").symlink_to(elsewhere, target_is_directory=True)
    assert main(argv("sft", tiny_model_dir, inputs, out, "--max-steps", "2", "--overwrite")) == 0
    assert not (out / "final").is_symlink() and (elsewhere / "model.safetensors").exists()


def test_a_directory_of_the_users_own_files_is_refused(tiny_model_dir, inputs, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    for extra in ([], ["--overwrite"]):
        assert main(argv("sft", tiny_model_dir, inputs, out, "--max-steps", "2", *extra)) == 2
        assert "holds other files and no preflab run" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["README.md"]
    assert (out / "README.md").read_text() == "my notes"


# --- input ------------------------------------------------------------------------------------

def test_bad_data_fails_before_the_hub_is_asked(tmp_path, capsys, monkeypatch):
    """The data is read and checked before the tokenizer loads: a typo in a record does not
    wait on the network first."""
    from preflab import models

    asked: list[str] = []
    monkeypatch.setattr(models, "hub_unreachable", lambda endpoint, *a, **k: asked.append(endpoint)
                        or "no route")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "the movie", "completion": "was fine"}\n'
                   '{"prompt": "the film", "completion": 3}\n')
    out = tmp_path / "run"
    assert main(["sft", "--model", "org/some-model", "--data", str(bad),
                 "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}, line 2, field 'completion'" in err and not asked
    assert not out.exists()

    good = write_jsonl(tmp_path / "good.jsonl", sft_records(8))
    assert main(["sft", "--model", "org/some-model", "--data", str(good),
                 "--output-dir", str(out)]) == 2
    assert asked and "cannot be reached" in capsys.readouterr().err  # then the hub


def test_running_out_of_memory_names_the_batch_size(tiny_model_dir, inputs, tmp_path, capsys,
                                                    monkeypatch):
    from preflab.algorithms import sft

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(sft, "forward_nll", out_of_memory)
    out = tmp_path / "run"
    assert main(argv("sft", tiny_model_dir, inputs, out, "--max-steps", "2")) == 2
    err = capsys.readouterr().err
    assert "ran out of memory with --batch-size 4" in err and "preflab plan" in err
    assert "Traceback" not in err and not (out / rundir.LOCK).exists()


@pytest.mark.parametrize("weight", ["nan", "inf", "-inf"])
def test_a_reward_weight_that_is_not_finite_is_refused(weight, tiny_model_dir, inputs, tmp_path,
                                                       capsys):
    args = argv("ppo", tiny_model_dir, inputs, tmp_path / "run")
    args[args.index("--reward") + 1] += f":{weight}"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--reward: the weight of" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, says", [
    (["--lora-rank", "2", "--lora-target-modules", "no_such_proj"], "names no module"),
    (["--device", "meta"], "--device meta holds shapes but no data"),
    (["--device", "mps"], "--device mps asked for"),
    (["--device", "cuda:7"], "--device cuda:7"),
])
def test_a_model_setting_the_machine_cannot_meet_is_one_paragraph(flags, says, tiny_model_dir,
                                                                  inputs, tmp_path, capsys):
    if "mps" in flags and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    if "cuda:7" in flags and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    out = tmp_path / "run"
    assert main(argv("sft", tiny_model_dir, inputs, out, "--max-steps", "2", *flags)) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert not out.exists()


def test_a_signal_on_a_save_step_writes_that_checkpoint_once(tiny_model_dir, inputs, tmp_path,
                                                             monkeypatch):
    from preflab.runtime import signals
    from preflab.training import session

    saves, calls = [], []
    real_save = session.save_step
    monkeypatch.setattr(session, "save_step",
                        lambda run, step, **kw: saves.append(step) or real_save(run, step, **kw))
    monkeypatch.setattr(signals, "requested_signal",
                        lambda ctx=None: calls.append(1) or (signal.SIGTERM if len(calls) == 2
                                                             else None))
    out = tmp_path / "run"
    assert main(argv("sft", tiny_model_dir, inputs, out, "--max-steps", "6",
                     "--save-every", "2")) == 143
    assert saves == [2] and (out / "checkpoints" / "step-2").is_dir()


def test_sigterm_stops_any_other_command_with_one_line(monkeypatch, capsys):
    """Outside a training loop, SIGTERM ends a command as Ctrl-C would: exit 143 and one
    line, not a traceback. The command here sends itself SIGTERM."""
    import types

    from preflab import cli

    module = types.ModuleType("preflab_test_selfterm")

    def selfterm(argv):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # interrupted by the handler cli.main installed
        return 0

    module.main = selfterm
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.COMMANDS, "selfterm", (module.__name__, "sends itself SIGTERM"))
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["selfterm"]) == 143
    err = capsys.readouterr().err
    assert err.strip() == "preflab selfterm: stopped by SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == before  # restored


def test_a_signal_before_the_first_step_stops_at_once(tiny_model_dir, inputs, tmp_path, capsys,
                                                      monkeypatch):
    """During loading there is nothing to checkpoint: the run stops there, not after step 1."""
    from preflab.training import session

    real = session.load_trainable
    steps: list[int] = []
    real_boundary = session.step_boundary
    monkeypatch.setattr(session, "step_boundary",
                        lambda run, step, *a, **kw: steps.append(step) or real_boundary(
                            run, step, *a, **kw))

    def load_then_signal(cfg, run):
        model = real(cfg, run)
        os.kill(os.getpid(), signal.SIGTERM)
        return model

    monkeypatch.setattr(session, "load_trainable", load_then_signal)
    out = tmp_path / "run"
    assert main(argv("sft", tiny_model_dir, inputs, out, "--max-steps", "4")) == 143
    err = capsys.readouterr().err
    assert "stopped by SIGTERM before the first step" in err and "Traceback" not in err
    assert steps == [] and not (out / "checkpoints").exists()
