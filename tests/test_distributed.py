"""The same command under torchrun: 2 CPU processes (gloo) give the 1-process result."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from preflab.algorithms import sft
from tests.sft_data import sft_records, write_jsonl


def _sft_torchrun(args: list[str]) -> subprocess.CompletedProcess:
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(port),
           "-m", "preflab.cli", "sft", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("fsdp", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_torchrun_two_processes_match_one(fsdp, tiny_model_dir, tmp_path):
    """DDP, and FSDP2 (each block sharded over the 2 processes, gathered for the checkpoint
    and final/) give the weights of 1 process with the same global batch (3 eval examples:
    the ranks' held-out shares differ, and a sharded evaluation must still run in step)."""
    data = write_jsonl(tmp_path / "train.jsonl", sft_records())
    common = ["--model", str(tiny_model_dir), "--data", str(data), "--max-steps", "4",
              "--learning-rate", "3e-3", "--no-progress", "--max-length", "32", "--eval-fraction", "0.2"]
    assert sft.main(common + ["--output-dir", str(tmp_path / "one"), "--batch-size", "4"]) == 0
    result = _sft_torchrun([*common, *fsdp, "--output-dir", str(tmp_path / "two"),
                            "--batch-size", "2", "--save-every", "2"])  # checkpoints gather
    assert result.returncode == 0, result.stderr[-3000:]
    one = load_file(tmp_path / "one/final/model.safetensors")
    two = load_file(tmp_path / "two/final/model.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=2e-5, rtol=1e-4)
    metrics = [json.loads(x) for x in (tmp_path / "two/metrics.jsonl").read_text().splitlines()]
    solo = [json.loads(x) for x in (tmp_path / "one/metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["eval/loss"] == pytest.approx(solo[-1]["eval/loss"], rel=1e-4)
    if fsdp:  # each process held half of the weights, gradients and AdamW state
        summary = json.loads((tmp_path / "two/summary.json").read_text())
        alone = json.loads((tmp_path / "one/summary.json").read_text())
        shard, whole = summary["tensor_bytes"]["policy"], alone["tensor_bytes"]["policy"]
        assert shard["total"] < 0.6 * whole["total"]
        # resumed from the step-2 checkpoint (weights and optimizer state scattered back),
        # steps 3 and 4 again give the same final weights
        resumed = _sft_torchrun([*common, *fsdp, "--output-dir", str(tmp_path / "two"),
                                 "--batch-size", "2", "--save-every", "2", "--resume"])
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resumed from" in resumed.stdout
        again = load_file(tmp_path / "two/final/model.safetensors")
        for key in two:
            torch.testing.assert_close(again[key], two[key], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("extra, says", [
    ([], "torchrun"),  # one process has nothing to shard over
    (["--lora-rank", "2"], "--lora-rank"),
])
def test_fsdp_refuses_what_it_cannot_do(extra, says, tiny_model_dir, tmp_path, capsys):
    from preflab.cli import main
    from tests.test_rm import preference_records

    data = write_jsonl(tmp_path / "pairs.jsonl", preference_records(8))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "the movie"}])
    extra = [str(prompts) if x == "PROMPTS" else x for x in extra]
    code = main(["dpo", "--model", str(tiny_model_dir), "--data", str(data), "--output-dir",
                 str(tmp_path / "o"), "--fsdp", "--max-steps", "1", "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "Traceback" not in err


@pytest.mark.parametrize("mode", [
    [],  # a frozen copy of the model
    ["--precompute-ref"],  # the reference's log-probs computed once, the copy freed
    ["--lora-rank", "2"],  # the base with the adapter switched off
    ["--loss", "simpo"],  # no reference
    # the policy sharded (FSDP2), the copy whole; sampling the sharded policy in lockstep
    ["--fsdp", "--eval-fraction", "0.1", "--eval-prompts", "PROMPTS"],
    ["--fsdp", "--precompute-ref"],
], ids=["copy", "precomputed", "lora-adapters-off", "reference-free", "fsdp-copy",
        "fsdp-precomputed"])
def test_dpo_torchrun_each_reference_mode_matches_one_process(mode, tiny_model_dir, tmp_path):
    """2 gloo processes with half the batch each give the weights of 1 process with all of it,
    wherever the reference lives, and with the policy sharded (``--fsdp``: the 2-process side
    only; 3 held-out pairs split unevenly between the ranks)."""
    from preflab.algorithms import dpo
    from tests.test_rm import preference_records, torchrun

    data = write_jsonl(tmp_path / "pairs.jsonl", preference_records(32))
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": p} for p in ("the movie", "a film was", "this plot")])
    mode = [str(prompts) if m == "PROMPTS" else m for m in mode]
    if "--eval-prompts" in mode:
        mode += ["--eval-max-new-tokens", "8"]
    common = ["--model", str(tiny_model_dir), "--data", str(data), "--max-steps", "3",
              "--learning-rate", "3e-3", "--no-progress", "--max-length", "32",
              "--eval-fraction", "0", *[m for m in mode if m != "--fsdp"]]
    sharded = ["--fsdp"] if "--fsdp" in mode else []
    assert dpo.main(common + ["--output-dir", str(tmp_path / "one"), "--batch-size", "8"]) == 0
    result = torchrun("dpo", common + [*sharded, "--output-dir", str(tmp_path / "two"),
                                                 "--batch-size", "4"])
    assert result.returncode == 0, result.stderr[-3000:]
    one = load_file(tmp_path / "one/final/model.safetensors")
    two = load_file(tmp_path / "two/final/model.safetensors")
    start = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(one[k], start[k]) for k in one)
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=2e-5, rtol=1e-4)
    if "--eval-fraction" in mode:
        a, b = (json.loads(x) for x in ((tmp_path / d / "metrics.jsonl").read_text()
                                         .splitlines()[-1] for d in ("one", "two")))
        assert a["eval/loss"] == pytest.approx(b["eval/loss"], rel=1e-4)
    if "--eval-prompts" in mode:  # the sharded policy sampled what the whole one did
        assert a["eval/distinct_n"] == b["eval/distinct_n"]
        assert a["eval/kl"] == pytest.approx(b["eval/kl"], rel=1e-3, abs=1e-5)


@pytest.mark.parametrize("command, sharded, mode", [
    ("sft", [], []), ("rm", [], []), ("dpo", [], []), ("sft", ["--fsdp"], []),
    ("dpo", [], ["--precompute-ref"]), ("dpo", [], ["--lora-rank", "2"]),
    ("dpo", [], ["--loss", "simpo"]),
], ids=["sft", "rm", "dpo-copy", "sft-fsdp", "dpo-precomputed", "dpo-lora-adapters-off",
        "dpo-reference-free"])
def test_accelerate_launch_two_processes_match_one(command, sharded, mode, tiny_model_dir,
                                                   tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` on a CPU machine starts 2 gloo
    processes (``--cpu`` would silently start one): the run records world size 2, and its
    weights equal 1 process with the whole batch; with preflab's ``--fsdp`` too, and for dpo
    wherever its reference lives. (ppo: ``test_ppo.py``.)"""
    from preflab.algorithms import dpo, rm
    from tests.test_rm import accelerate_launch, preference_records

    if command == "sft":
        data = write_jsonl(tmp_path / "train.jsonl", sft_records())
    else:
        data = write_jsonl(tmp_path / "pairs.jsonl", preference_records(32))
    common = ["--model", str(tiny_model_dir), "--data", str(data), "--max-steps", "3",
              "--learning-rate", "3e-3", "--no-progress", "--max-length", "32",
              "--eval-fraction", "0", *mode]
    module = {"sft": sft, "rm": rm, "dpo": dpo}[command]
    assert module.main(common + ["--output-dir", str(tmp_path / "one"), "--batch-size", "8"]) == 0
    result = accelerate_launch(command, [*common, *sharded, "--output-dir", str(tmp_path / "two"),
                                         "--batch-size", "4"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "two/summary.json").read_text())
    assert summary["world_size"] == 2
    one = load_file(tmp_path / "one/final/model.safetensors")
    two = load_file(tmp_path / "two/final/model.safetensors")
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=2e-5, rtol=1e-4)




def test_a_rank_leaves_through_exit_rank_with_the_commands_status(monkeypatch, capsys):
    """Once this process has joined a process group, ``preflab`` ends it through
    ``distributed.exit_rank`` with the command's exit status (success and error alike)."""
    from preflab import cli
    from preflab.runtime import distributed

    left = []

    def record(code):
        left.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(distributed, "exit_rank", record)
    assert cli.main(["--version"]) == 0 and left == []  # not a rank: main returns
    monkeypatch.setattr(distributed, "_joined", True)
    for argv, code in ((["--version"], 0), (["no-such-command"], 2)):
        with pytest.raises(SystemExit):
            cli.main(argv)
        assert left[-1] == code
    capsys.readouterr()


def test_exit_rank_flushes_output_and_exits_with_the_status():
    """``exit_rank`` skips the interpreter's shutdown, but nothing printed is lost."""
    code = ("import sys\nfrom preflab.runtime import distributed\n"
            "print('last words', end='')\nprint('on stderr', end='', file=sys.stderr)\n"
            "distributed.exit_rank(3)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered pipes
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env=env)
    assert (result.returncode, result.stdout, result.stderr) == (3, "last words", "on stderr")
