"""Online DPO: rounds of sampling, judging and training on the tiny Llama; each round's files;
best-against-worst pairing; a run stopped mid-round resumes to the uninterrupted weights, with
a fixed and with a moving reference."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from preflab.algorithms import online_dpo
from preflab.cli import main
from preflab.generation import Sample
from tests.sft_data import write_jsonl

REWARD = '''
def positive(prompts, completions, **kwargs):
    return [sum(w in ("great", "good", "fun") for w in c.split()) - 0.01 * len(c.split())
            for c in completions]


def constant(prompts, completions, **kwargs):
    return [1.0 for _ in completions]
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("online")
    prompts = [{"prompt": f"{d} {n} was"} for d in ("the", "a", "this", "that")
               for n in ("movie", "film", "plot", "story")]
    (root / "r.py").write_text(REWARD)
    return write_jsonl(root / "prompts.jsonl", prompts), root / "r.py"


def args(model, files, out, *extra) -> list[str]:
    prompts, reward = files
    return ["online-dpo", "--model", str(model), "--data", str(prompts), "--judge",
            f"{reward}:positive", "--output-dir", str(out), "--rounds", "2",
            "--pairs-per-round", "8", "--num-samples", "4", "--batch-size", "4",
            "--max-new-tokens", "6", "--learning-rate", "1e-2", "--warmup-ratio", "0",
            "--log-every", "1", "--no-progress", "--max-length", "32", *extra]


def test_make_pairs_takes_best_and_worst_and_counts_ties():
    def group(*texts):
        return [Sample("p", t, [i + 3], True, [1]) for i, t in enumerate(texts)]

    samples = [group("a", "b", "c"), group("x", "y", "z")]
    pairs, ties = online_dpo.make_pairs(["p1", "p2"], samples, [0.1, 0.9, 0.5, 2.0, 2.0, 2.0])
    assert ties == 1 and len(pairs) == 1
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == ("b", "a")
    assert pairs[0]["chosen_ids"] == [4] and pairs[0]["prompt_ids"] == [1]


def test_rounds_write_their_files_and_train(tiny_model_dir, files, tmp_path):
    out = tmp_path / "run"
    assert main(args(tiny_model_dir, files, out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["steps_per_round"] == 2  # 8 pairs / batch 4
    for number in (1, 2):
        folder = out / "rounds" / f"round-{number}"
        samples = [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]
        pairs = [json.loads(x) for x in (folder / "pairs.jsonl").read_text().splitlines()]
        figures = json.loads((folder / "round.json").read_text())
        assert len(samples) == 8 and all(len(s["completions"]) == 4 for s in samples)
        assert figures["round/pairs"] == len(pairs) and figures["round/pairs"] + \
            figures["round/ties"] == 8
        assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("round") for r in rows if "loss" in r] == [1, 1, 2, 2]
    # the two rounds drew different prompts from one stream
    first = {json.loads(x)["prompt"] for x in (out / "rounds/round-1/samples.jsonl").read_text().splitlines()}
    second = {json.loads(x)["prompt"] for x in (out / "rounds/round-2/samples.jsonl").read_text().splitlines()}
    assert first | second == {f"{d} {n} was" for d in ("the", "a", "this", "that")
                              for n in ("movie", "film", "plot", "story")}


@pytest.mark.parametrize("reference", ["fixed", "moving"])
def test_stopped_mid_round_resumes_to_the_same_weights(reference, tiny_model_dir, files,
                                                       tmp_path, monkeypatch):
    full = tmp_path / "full"
    assert main(args(tiny_model_dir, files, full, "--reference", reference)) == 0

    from preflab.runtime import signals

    calls = []
    real = signals.requested_signal

    def stop_after_step_3(ctx=None):
        calls.append(1)
        return signal.SIGTERM if len(calls) == 3 else real(ctx)

    monkeypatch.setattr(signals, "requested_signal", stop_after_step_3)
    out = tmp_path / "stopped"
    assert main(args(tiny_model_dir, files, out, "--reference", reference)) == 143
    assert (out / "checkpoints" / "step-3").is_dir() and not (out / "final").exists()
    monkeypatch.setattr(signals, "requested_signal", real)
    assert main(args(tiny_model_dir, files, out, "--reference", reference, "--resume")) == 0
    got, want = (load_file(d / "final/model.safetensors") for d in (out, full))
    for key in want:
        assert torch.equal(got[key], want[key]), key
    if reference == "moving":
        assert (out / "rounds/round-2/reference.safetensors").exists()
        # The round-2 reference really moved: a fixed reference trains to other weights, so
        # the equality above could not pass with the reference left at the start.
        fixed = tmp_path / "fixed"
        assert main(args(tiny_model_dir, files, fixed, "--reference", "fixed")) == 0
        other = load_file(fixed / "final/model.safetensors")
        assert any(not torch.equal(other[k], want[k]) for k in want)


def test_a_judge_that_cannot_tell_completions_apart_is_refused(tiny_model_dir, files, tmp_path,
                                                               capsys):
    argv = args(tiny_model_dir, files, tmp_path / "run")
    argv[argv.index("--judge") + 1] = f"{files[1]}:constant"
    assert main(argv) == 2
    assert "no pair to learn from" in capsys.readouterr().err


def test_max_steps_is_refused(tiny_model_dir, files, tmp_path, capsys):
    assert main(args(tiny_model_dir, files, tmp_path / "run", "--max-steps", "3")) == 2
    assert "--rounds x --steps-per-round" in capsys.readouterr().err


def test_online_dpo_is_a_compare_method_sharing_the_ppo_reward_model(tiny_world, tmp_path,
                                                                     capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--world", str(tiny_world), "--output-dir", str(out), "--preset",
                 "quick", "--methods", "ppo,online-dpo", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    online = [x for x in lines if x.startswith("preflab online-dpo ")]
    rm_runs = [x for x in lines if x.startswith("preflab rm ") and "runs/rm-s0 " in x + " "]
    assert len(online) == 1 and len(rm_runs) == 1  # one reward model for both methods
    judge = online[0].split("--judge ")[1].split()[0]
    assert judge.endswith("runs/rm-s0")
    assert lines.index(rm_runs[0]) < lines.index(online[0])


def test_a_pairwise_judge_ranks_by_win_rate_and_overwrite_starts_afresh(tiny_model_dir, files,
                                                                        tiny_world, tmp_path):
    """world: the world's simulated annotators compare every two samples; the answers are
    cached in the run, and --overwrite removes the rounds and the cache with the old run."""
    out = tmp_path / "run"
    argv = args(tiny_model_dir, files, out, "--rounds", "1")
    argv[argv.index("--judge") + 1] = f"world:{tiny_world}"
    assert main(argv) == 0
    samples = [json.loads(x) for x in (out / "rounds/round-1/samples.jsonl").read_text().splitlines()]
    for s in samples:  # win rates over the 3 others: multiples of 1/6 (ties count 1/2)
        assert all(0 <= x <= 1 and abs(x * 6 - round(x * 6)) < 1e-9 for x in s["scores"])
        assert sum(s["scores"]) == pytest.approx(2.0)  # 6 games among 4, each worth 1
    assert (out / "judge-cache.sqlite").exists()
    (out / "rounds/round-1/round.json").write_text('{"stale": true}')
    assert main([*argv, "--overwrite"]) == 0
    assert "stale" not in (out / "rounds/round-1/round.json").read_text()


def test_a_moving_reference_with_lora_is_refused(tiny_model_dir, files, tmp_path, capsys):
    for extra in ([], ["--ref-model", str(tiny_model_dir)]):  # a separate copy cannot take it
        assert main(args(tiny_model_dir, files, tmp_path / "run", "--reference", "moving",
                         "--lora-rank", "2", *extra)) == 2
        assert "--reference moving copies the policy's weights" in capsys.readouterr().err


@pytest.mark.parametrize("sharded", [[], ["--fsdp", "--reference", "moving"]],
                         ids=["ddp", "fsdp-moving"])
def test_torchrun_two_processes_match_one(sharded, tiny_model_dir, files, tmp_path):
    """Rank 0 samples and judges each round; both processes train on halves of its pairs.
    2 gloo processes with batch 4 each give the rounds and the weights of 1 with batch 8.
    With ``--fsdp`` every process samples the sharded policy in lockstep, and a moving
    reference copies its gathered weights."""
    from tests.test_rm import torchrun

    one, two = tmp_path / "one", tmp_path / "two"
    moving = [m for m in sharded if m != "--fsdp"]
    assert main(args(tiny_model_dir, files, one, "--batch-size", "8", *moving)) == 0
    result = torchrun("online-dpo", args(tiny_model_dir, files, two, *sharded)[1:])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((two / "summary.json").read_text())
    assert (summary["world_size"], summary["steps"], summary["steps_per_round"]) == (2, 2, 1)
    for number in (1, 2):
        pairs = [(one if k == 0 else two) / "rounds" / f"round-{number}" / "pairs.jsonl"
                 for k in (0, 1)]
        assert pairs[0].read_text() == pairs[1].read_text()
    a, b = (load_file(d / "final/model.safetensors") for d in (one, two))
    for key in a:  # AdamW at lr 1e-2 turns rounding in near-zero gradients into ~2e-5
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-4)
