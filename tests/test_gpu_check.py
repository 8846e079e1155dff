"""benchmarks/gpu_check.py without a GPU: the data it builds, its refusal without CUDA, the
precision flags it passes, and what it reads from a run directory."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from preflab.data.formats import RecordKind, detect_kind, validate
from preflab.data.readers import read_records
from preflab.models.tiny import build_word_tokenizer

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_in_preflab_formats_within_max_length(gpu_check, tmp_path):
    tokenizer = build_word_tokenizer(gpu_check.vocabulary())
    data = gpu_check.build_data(tokenizer, tmp_path, pairs=6, prompts=5, max_length=256,
                                response_length=32)
    assert data["records"] == {"pairs": 6, "sft": 6, "prompts": 5}
    assert 256 // 2 <= data["seq_len"] <= 256
    assert data["prompt_len"] + 32 <= 256
    expected = {"pairs": RecordKind.PREFERENCE, "sft": RecordKind.CONVERSATIONAL,
                "prompts": RecordKind.PROMPT_ONLY}
    for name, kind in expected.items():
        records = read_records(data["files"][name])
        for record in records:
            assert detect_kind(record) is kind
            validate(record, kind)
    for record in read_records(data["files"]["pairs"]):
        assert record.data["chosen"] != record.data["rejected"]
    unk = tokenizer.convert_tokens_to_ids("<unk>")
    for record in read_records(data["files"]["pairs"]):
        for side in ("prompt", "chosen", "rejected"):  # every word is in the --tiny vocabulary
            assert unk not in tokenizer(record.data[side][0]["content"])["input_ids"]


def test_refuses_without_cuda(gpu_check, monkeypatch, capsys):
    no_cuda = {"torch": "2.x", "torch_cuda": None, "cuda_available": False}
    assert gpu_check.device_refusal("cpu", no_cuda) is None
    assert gpu_check.device_refusal("cuda", {**no_cuda, "cuda_available": True}) is None
    assert "--device 'tpu'" in gpu_check.device_refusal("tpu", no_cuda)
    monkeypatch.setattr(gpu_check, "probe", lambda: no_cuda)
    assert gpu_check.main(["--tiny", "--out", "never.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA device" in err and "--device cpu" in err
    assert not Path("never.json").exists()


def test_the_runs_it_makes(gpu_check):
    names = [f"{c}-{p}" for c, p in gpu_check.run_list(fp32_all=False)]
    assert names[0] == "rm-bf16-mixed" and {"dpo-fp32", "dpo-bf16-true"} <= set(names)
    assert len(gpu_check.run_list(fp32_all=True)) == len(names) + 4


def test_reads_a_run_and_compares_with_fp32(gpu_check, tmp_path):
    def write_run(name, loss, rates):
        run = tmp_path / name
        run.mkdir()
        (run / "summary.json").write_text(json.dumps(
            {"steps": 3, "tokens": 3000, "wall_s": 2.0, "peak_rss_bytes": 1,
             "cuda_max_allocated_bytes": 3 * 2**30}))
        rows = [{"step": i + 1, "loss": 1.0, "lr": 1e-5, "tokens_per_sec": r}
                for i, r in enumerate(rates)]
        rows[-1]["loss"] = loss
        rows.append({"step": 3})  # the final evaluation row: no loss, no lr
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {"name": name, "command": "dpo", "precision": name, "status": "ok",
                **gpu_check.read_run(run)}

    mixed = write_run("bf16-mixed", 0.5, [10.0, 2000.0, 1000.0])
    assert mixed["tokens_per_s"] == 1500.0
    assert mixed["tokens_per_s_steady"] == 1500.0  # median after the first logged step
    assert mixed["loss"] == 0.5 and mixed["loss_step"] == 3
    mixed["plan"] = {"method": "dpo-copy", "peak_bytes": 4 * 2**30}
    fp32 = write_run("fp32", 0.25, [10.0, 20.0, 30.0])
    records = [mixed, fp32, {"name": "grpo-bf16-mixed", "command": "grpo",
                             "precision": "bf16-mixed", "status": "failed", "exit_code": 1,
                             "stderr_tail": "Traceback\nRuntimeError: boom"}]
    gpu_check.add_comparisons(records)
    assert mixed["loss_minus_fp32"] == 0.25 and mixed["cuda_over_plan"] == 0.75
    assert "loss_minus_fp32" not in fp32
    shown = gpu_check.table(records)
    assert "+0.2500" in shown and "RuntimeError: boom" in shown
