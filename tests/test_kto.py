"""KTO: the reference point (fixed partners, no gradient, one value per optimizer batch), the
two branches against values worked by hand, the balance warning, and end-to-end runs on the
tiny Llama: gradient accumulation and 2 gloo processes give the 1-process weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from preflab import models
from preflab.algorithms import kto
from preflab.data import UnpairedExample
from preflab.models.logprobs import forward_logps
from preflab.runtime.distributed import DistContext
from preflab.training import reference
from tests.sft_data import write_jsonl
from tests.test_dpo import pair_records

SINGLE = DistContext(rank=0, world_size=1, local_rank=0)


def test_partners_form_one_cycle_and_never_change():
    for n in (2, 3, 10, 97):
        partner = kto.partners(n, seed=7)
        assert sorted(partner) == list(range(n))  # a permutation
        assert all(partner[i] != i for i in range(n))
        seen, i = set(), 0
        while i not in seen:  # one cycle through every example
            seen.add(i)
            i = partner[i]
        assert len(seen) == n
        assert kto.partners(n, seed=7) == partner


def test_mismatched_takes_the_partners_completion_and_fits_max_length():
    examples = [UnpairedExample([1, 2], [3, 4, 5], True), UnpairedExample([6], [7, 8], False),
                UnpairedExample([9, 9, 9], [10], True)]
    rows = kto.mismatched(examples, [1, 2, 0], [0, 2], max_length=4)
    assert rows == [UnpairedExample([1, 2], [7, 8], True),
                    UnpairedExample([9, 9, 9], [3], True)]  # cut to 4 tokens


def test_reference_point_is_the_clamped_mean_and_carries_no_gradient():
    kl = torch.tensor(3.0, requires_grad=True)
    z0 = kto.reference_point(kl, 4, SINGLE)
    assert z0.item() == pytest.approx(0.75) and not z0.requires_grad
    assert kto.reference_point(torch.tensor(-2.0), 4, SINGLE).item() == 0.0


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tiny_tokenizer):
    """A policy moved away from the reference, and four examples (two of each label)."""
    policy = models.load_causal_lm(str(tiny_model_dir), dtype=torch.float32,
                                   device=torch.device("cpu"))
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    ref_model = models.load_causal_lm(str(tiny_model_dir), dtype=torch.float32,
                                      device=torch.device("cpu"))
    ids = lambda text: tiny_tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    examples = [UnpairedExample(ids("the movie was"), ids("great fun"), True),
                UnpairedExample(ids("the film was"), ids("awful"), False),
                UnpairedExample(ids("a plot"), ids("so boring"), False),
                UnpairedExample(ids("this story"), ids("really good"), True)]
    return policy, ref_model, examples


def FrozenCopy(model) -> reference.Reference:  # noqa: N802 (reads as the role it builds)
    return reference.Reference("copy", model=model)


def test_both_branches_match_values_worked_by_hand(setup):
    """beta 0.5, w_D 2, w_U 3; r and z0 from separate forward passes, the losses by formula."""
    policy, ref_model, examples = setup
    cfg = kto.KTOConfig(beta=0.5, desirable_weight=2.0, undesirable_weight=3.0, max_length=64)
    partner = kto.partners(len(examples), seed=0)
    batch, kl_batch = kto.batches_for(examples, partner, [0, 1, 2, 3], cfg, 0, torch.device("cpu"))
    ref = FrozenCopy(ref_model)

    def logps(model, b):
        with torch.no_grad():
            return forward_logps(model, b["input_ids"], b["attention_mask"],
                                 b["completion_mask"])[0].sum.tolist()

    r = [a - b for a, b in zip(logps(policy, batch), logps(ref_model, batch))]
    kl = [a - b for a, b in zip(logps(policy, kl_batch), logps(ref_model, kl_batch))]
    z0 = max(0.0, sum(kl) / 4)
    sig = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    want = [2 * (1 - sig(0.5 * (r[0] - z0))), 3 * (1 - sig(0.5 * (z0 - r[1]))),
            3 * (1 - sig(0.5 * (z0 - r[2]))), 2 * (1 - sig(0.5 * (r[3] - z0)))]

    z0_t = kto.reference_point(kto.kl_sum(policy, ref, [kl_batch]), 4, SINGLE)
    assert z0_t.item() == pytest.approx(z0, abs=1e-6)
    losses, sums = kto.kto_step(policy, ref, cfg, batch, z0_t)
    assert losses.tolist() == pytest.approx(want, abs=1e-6)
    stats = kto._means(sums, 4.0)
    assert stats["rewards/chosen"] == pytest.approx(0.5 * (r[0] + r[3]) / 2, abs=1e-6)
    assert stats["rewards/rejected"] == pytest.approx(0.5 * (r[1] + r[2]) / 2, abs=1e-6)
    assert stats["kl"] == pytest.approx(z0, abs=1e-6)


def test_no_gradient_reaches_the_reference_point(setup):
    """The gradient with z0 computed in the step equals the gradient with z0 a constant."""
    policy, ref_model, examples = setup
    cfg = kto.KTOConfig(beta=0.5, max_length=64)
    partner = kto.partners(len(examples), seed=0)
    batch, kl_batch = kto.batches_for(examples, partner, [0, 1, 2, 3], cfg, 0, torch.device("cpu"))
    ref = FrozenCopy(ref_model)
    z0 = kto.reference_point(kto.kl_sum(policy, ref, [kl_batch]), 4, SINGLE)
    assert not z0.requires_grad

    def grads(point) -> list[torch.Tensor]:
        policy.zero_grad()
        kto.kto_step(policy, ref, cfg, batch, point)[0].sum().backward()
        return [p.grad.clone() for p in policy.parameters()]

    for a, b in zip(grads(z0), grads(torch.tensor(float(z0)))):
        assert torch.equal(a, b)


def test_an_imbalanced_dataset_gets_the_recommended_weights():
    cfg = kto.KTOConfig()
    few_good = [UnpairedExample([1], [2], i < 10) for i in range(100)]  # 10 good, 90 bad
    warning = kto.check_balance(cfg, few_good)
    # w_D * 10 / (1 * 90) in [1, 4/3]: w_D in [9, 12].
    assert "between 9 and 12" in warning and "= 0.111" in warning
    balanced = [UnpairedExample([1], [2], i % 2 == 0) for i in range(100)]
    assert kto.check_balance(cfg, balanced) is None  # ratio 1
    assert "only undesirable" in kto.check_balance(cfg, [UnpairedExample([1], [2], False)] * 3)


# --- end to end --------------------------------------------------------------------------------

COMMON = ["--no-progress", "--log-every", "1", "--max-length", "32", "--learning-rate", "1e-2",
          "--eval-fraction", "0.25", "--max-steps", "4", "--warmup-ratio", "0"]


def unpaired_records(n: int = 48) -> list[dict]:
    out = []
    for record in pair_records(n // 2):
        out.append({"prompt": record["prompt"], "completion": record["chosen"], "label": True})
        out.append({"prompt": record["prompt"], "completion": record["rejected"], "label": False})
    return out


def test_kto_learns_from_labels_and_reports_both_classes(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "labelled.jsonl", unpaired_records(64))
    out = tmp_path / "run"
    assert kto.main(["--model", str(tiny_model_dir), "--data", str(data), "--output-dir",
                     str(out), "--batch-size", "8", *COMMON]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["desirable_examples"] + summary["undesirable_examples"] == 48
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    for name in ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
                 "logps/rejected", "grad_norm", "lr"):
        assert name in train[-1], name
    assert train[-1]["rewards/margins"] > 0  # desirable up, undesirable down
    assert rows[-1]["eval/rewards/margins"] > rows[0]["eval/rewards/margins"]
    assert set(summary["tensor_bytes"]) == {"policy", "reference"}


def test_gradient_accumulation_gives_the_same_update(tiny_model_dir, tmp_path):
    """z0 is taken over the whole optimizer batch, so 2 x 2 is 1 x 4."""
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records(32))
    base = ["--model", str(tiny_model_dir), "--data", str(data), *COMMON]
    assert kto.main([*base, "--output-dir", str(tmp_path / "a"), "--batch-size", "4"]) == 0
    assert kto.main([*base, "--output-dir", str(tmp_path / "b"), "--batch-size", "2",
                     "--grad-accum", "2"]) == 0
    a, b = (load_file(tmp_path / d / "final/model.safetensors") for d in "ab")
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("fsdp", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_kto_torchrun_two_processes_match_one(fsdp, tiny_model_dir, tmp_path):
    """DDP, and FSDP2 (the policy sharded, the reference whole; the held-out examples split
    unevenly, so the sharded evaluation runs spare batches), match 1 process."""
    from tests.test_rm import torchrun

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records(32))
    base = ["--model", str(tiny_model_dir), "--data", str(data), *COMMON]
    assert kto.main([*base, "--output-dir", str(tmp_path / "one"), "--batch-size", "4"]) == 0
    result = torchrun("kto", [*base, *fsdp, "--output-dir", str(tmp_path / "two"),
                                        "--batch-size", "2", "--eval-batch-size", "3"])
    assert result.returncode == 0, result.stderr[-3000:]
    one = load_file(tmp_path / "one/final/model.safetensors")
    two = load_file(tmp_path / "two/final/model.safetensors")
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=2e-5, rtol=1e-4)
    rows = [json.loads(x) for x in (tmp_path / "two/metrics.jsonl").read_text().splitlines()]
    want = [json.loads(x) for x in (tmp_path / "one/metrics.jsonl").read_text().splitlines()]
    assert rows[1]["kl"] == pytest.approx(want[1]["kl"], abs=1e-5)  # z0 reduced over ranks
    assert rows[-1]["eval/kl"] == pytest.approx(want[-1]["eval/kl"], abs=1e-5)


def test_kto_is_a_compare_method(tiny_world, tmp_path, capsys):
    """``--methods kto``: one kto command on the same pairs as DPO, from the SFT checkpoint."""
    from preflab.cli import main

    out = tmp_path / "cmp"
    assert main(["compare", "--world", str(tiny_world), "--output-dir", str(out), "--preset",
                 "quick", "--methods", "dpo,kto", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    kto_lines = [x for x in lines if x.startswith("preflab kto ")]
    dpo_lines = [x for x in lines if x.startswith("preflab dpo ") and "runs/dpo-s0" in x]
    assert len(kto_lines) == 1 and "runs/kto-s0" in kto_lines[0]
    data = lambda line: line.split("--data ")[1].split()[0]  # noqa: E731
    model = lambda line: line.split("--model ")[1].split()[0]  # noqa: E731
    assert data(kto_lines[0]) == data(dpo_lines[0])
    assert model(kto_lines[0]) == model(dpo_lines[0])


def test_the_quick_comparison_includes_kto_and_online_dpo(quick):
    """The shared quick run (tests/conftest.py) adds both: each finishes, is scored, and shows
    in the runs table, the memory chart's configurations and the results."""
    out, _, _ = quick
    results = json.loads((out / "results.json").read_text())
    runs = {r["method"]: r for r in results["runs"] if r["experiment"] == "main"}
    for method, label in (("kto", "KTO"), ("online-dpo", "Online DPO (RM judge)")):
        assert runs[method]["status"] == "done" and "eval/gold_reward" in runs[method]["score"]
        assert any(c["method"] == method for c in results["memory"]["configs"])
        assert f"| {label} | done |" in (out / "report.md").read_text()
    online = next(c for c in results["memory"]["configs"] if c["method"] == "online-dpo")
    assert online["roles"]["reward"]["total"] > 0  # the judge's reward model, counted
