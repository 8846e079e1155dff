"""DPO end to end on tiny random models: reference modes, memory accounting, loss families."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from preflab.algorithms import dpo, sft
from tests.sft_data import sft_records, write_jsonl

ADJ_GOOD = ["great", "good", "fun", "fine"]
ADJ_BAD = ["bad", "awful", "boring"]


def pair_records(n: int = 48, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        noun = rng.choice(["movie", "film", "plot", "story"])
        out.append({"prompt": f"the {noun} was", "chosen": f"really {rng.choice(ADJ_GOOD)}",
                    "rejected": f"really {rng.choice(ADJ_BAD)}"})
    return out


@pytest.fixture(scope="module")
def sft_model(tiny_model_dir, tmp_path_factory) -> Path:
    """A policy that differs from the tiny base, so policy != reference from step 0."""
    out = tmp_path_factory.mktemp("sft")
    data = write_jsonl(out / "sft.jsonl", sft_records())
    sft.main(["--model", str(tiny_model_dir), "--data", str(data), "--output-dir", str(out / "run"),
              "--max-steps", "10", "--learning-rate", "3e-3", "--no-progress", "--max-length", "32"])
    return out / "run" / "final"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", pair_records())


def run_dpo(model, data, out, *extra) -> tuple[dict, list[dict]]:
    args = ["--model", str(model), "--data", str(data), "--output-dir", str(out), "--no-progress",
            "--log-every", "1", "--batch-size", "4", "--max-length", "32", "--learning-rate", "1e-2",
            "--warmup-ratio", "0", "--eval-fraction", "0.25", *extra]
    assert dpo.main(args) == 0
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return json.loads((Path(out) / "summary.json").read_text()), [r for r in rows if "loss" in r]


def test_reference_modes_agree_full_finetuning(sft_model, tiny_model_dir, pairs, tmp_path):
    """Policy = SFT model, reference = the base: a frozen copy and a precomputed cache agree."""
    common = ("--ref-model", str(tiny_model_dir), "--max-steps", "3")
    copy_summary, copy_rows = run_dpo(sft_model, pairs, tmp_path / "copy", *common)
    pre_summary, pre_rows = run_dpo(sft_model, pairs, tmp_path / "pre", *common, "--precompute-ref")
    assert copy_summary["reference_mode"] == "copy" and pre_summary["reference_mode"] == "precomputed"
    assert abs(copy_rows[0]["loss"] - 0.6931) > 1e-3  # policy != reference at step 1
    for a, b in zip(copy_rows, pre_rows):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-5)
    n_bytes = 4 * sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    assert copy_summary["tensor_bytes"]["reference"]["params"] == n_bytes
    assert pre_summary["tensor_bytes"]["reference"]["total"] == 0
    assert pre_summary["final_metrics"]["memory/tensor_bytes/reference"] == 0


def test_reference_modes_agree_lora(sft_model, pairs, tmp_path):
    """LoRA: base-with-adapters-off, a separate copy of the base, and a cache agree."""
    common = ("--lora-rank", "4", "--max-steps", "3")
    off_summary, off_rows = run_dpo(sft_model, pairs, tmp_path / "off", *common)
    copy_summary, copy_rows = run_dpo(sft_model, pairs, tmp_path / "copy", *common, "--ref-model", str(sft_model))
    pre_summary, pre_rows = run_dpo(sft_model, pairs, tmp_path / "pre", *common, "--precompute-ref")
    assert [s["reference_mode"] for s in (off_summary, copy_summary, pre_summary)] == [
        "adapter-off", "copy", "precomputed"]
    assert off_rows[-1]["loss"] != pytest.approx(0.6931, abs=1e-3)  # it moved
    for rows in (copy_rows, pre_rows):
        for a, b in zip(off_rows, rows):
            assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert off_summary["tensor_bytes"]["reference"]["total"] == 0
    assert pre_summary["tensor_bytes"]["reference"]["total"] == 0
    assert copy_summary["tensor_bytes"]["reference"]["total"] > 0


@pytest.mark.parametrize("loss", ["simpo", "orpo"])
def test_reference_free_losses_load_no_reference(sft_model, pairs, tmp_path, loss):
    summary, rows = run_dpo(sft_model, pairs, tmp_path / loss, "--loss", loss, "--max-steps", "4",
                            "--beta", "2.0" if loss == "simpo" else "0.1")
    assert summary["reference_mode"] == "none"
    assert summary["tensor_bytes"]["reference"]["total"] == 0
    assert all(r["loss"] == r["loss"] for r in rows)  # finite, not NaN


@pytest.mark.parametrize("loss", ["sigmoid", "cdpo", "ipo", "hinge", "robust"])
def test_every_loss_learns_the_preference(sft_model, pairs, tmp_path, loss):
    extra = ["--label-smoothing", "0.1"] if loss in ("cdpo", "robust") else []
    _, rows = run_dpo(sft_model, pairs, tmp_path / loss, "--loss", loss, "--max-steps", "12", *extra)
    assert rows[-1]["rewards/margins"] > rows[0]["rewards/margins"]
    assert rows[-1]["rewards/accuracies"] >= 0.75


def test_ipo_margin_settles_while_dpo_grows(sft_model, tmp_path):
    """Deterministic labels: IPO's margin beta*h settles at 1/2; DPO's keeps growing (Azar et al.)."""
    data = write_jsonl(tmp_path / "p.jsonl", pair_records(8))
    margins = {}
    for loss in ("ipo", "sigmoid"):
        _, rows = run_dpo(sft_model, data, tmp_path / loss, "--loss", loss, "--max-steps", "150",
                          "--beta", "0.1", "--lr-scheduler", "constant", "--eval-fraction", "0",
                          "--learning-rate", "3e-3", "--batch-size", "8")
        margins[loss] = [r["rewards/margins"] for r in rows]
    ipo, dpo_m = margins["ipo"], margins["sigmoid"]
    assert abs(ipo[-1] - 0.5) < 0.1 and abs(ipo[-1] - ipo[-30]) < 0.05  # settled at beta/(2 beta)
    assert dpo_m[-1] > 3 * 0.5 and dpo_m[-1] > dpo_m[-30]  # still growing, far beyond
