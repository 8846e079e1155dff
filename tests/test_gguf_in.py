"""GGUF in: every command that takes a model takes a .gguf file (or a directory holding one);
training from one writes an ordinary Hugging Face ``final/``."""

from __future__ import annotations

import json

import pytest
import torch

from preflab import models
from preflab.cli import main
from preflab.errors import ModelLoadError
from tests.sft_data import write_jsonl
from tests.test_export import CHAT, byte_level_tokenizer, run_export, save


@pytest.fixture(scope="module")
def gguf_model(tmp_path_factory):
    """A tiny Llama with a byte-level BPE tokenizer and a chat template, as ``model.gguf``
    (f32) in a directory of its own: ``(gguf path, the original model, its HF directory)``."""
    tmp = tmp_path_factory.mktemp("gguf-in")
    model, hf_dir = save(tmp, "llama", byte_level_tokenizer(), tied=True)
    out = tmp / "gguf" / "model.gguf"
    out.parent.mkdir()
    return run_export(hf_dir, out), model, hf_dir


def test_a_gguf_file_and_a_directory_holding_one_load_as_the_model(gguf_model):
    path, original, _ = gguf_model
    ids = torch.arange(1, 17).unsqueeze(0)
    for where in (str(path), str(path.parent)):
        model = models.load_causal_lm(where)
        torch.testing.assert_close(model(ids).logits, original(ids).logits, atol=1e-5, rtol=0)
        assert next(model.parameters()).dtype == torch.float32
        assert models.load_tokenizer(where).chat_template == original_template(gguf_model)
    half = models.load_causal_lm(str(path), dtype=torch.bfloat16)  # dequantized to --dtype
    assert next(half.parameters()).dtype == torch.bfloat16


def original_template(gguf_model) -> str:
    return models.load_tokenizer(str(gguf_model[2])).chat_template


def test_a_directory_of_several_gguf_files_says_which_to_choose(gguf_model, tmp_path, capsys):
    many = tmp_path / "many"
    many.mkdir()
    for name in ("a.gguf", "b.gguf"):
        (many / name).write_bytes(gguf_model[0].read_bytes())
    with pytest.raises(ModelLoadError, match=r"2 \.gguf files \(a\.gguf, b\.gguf\)"):
        models.gguf_location(str(many))
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "the movie"}])
    assert main(["sample", "--model", str(many), "--prompts", str(prompts), "--out",
                 str(tmp_path / "s.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "a.gguf" in err and "Traceback" not in err


def test_one_training_step_from_gguf_writes_an_ordinary_model_directory(gguf_model, tmp_path):
    path, original, _ = gguf_model
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT + [
        {"role": "assistant", "content": "good, and the plot was fun"}]}] * 4)
    out = tmp_path / "run"
    assert main(["sft", "--model", str(path), "--data", str(data), "--output-dir", str(out),
                 "--max-steps", "1", "--batch-size", "2", "--learning-rate", "1e-3",
                 "--no-progress"]) == 0
    final = out / "final"
    assert (final / "model.safetensors").is_file() and (final / "config.json").is_file()
    config = json.loads((final / "config.json").read_text())
    assert "quantization_config" not in config  # not a "GGUF-quantized" model any more
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(final)
    moved = [n for n, p in trained.named_parameters()
             if not torch.equal(p, original.state_dict()[n])]
    assert moved  # the step changed the weights
    assert models.load_tokenizer(str(final)).chat_template == original_template(gguf_model)


def test_sample_and_plan_take_a_gguf_model(gguf_model, tmp_path, capsys):
    path, original, _ = gguf_model
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": CHAT}, {"prompt": "the movie"}])
    out = tmp_path / "s.jsonl"
    assert main(["sample", "--model", str(path), "--prompts", str(prompts), "--out", str(out),
                 "--n", "2", "--max-new-tokens", "4", "--no-progress"]) == 0
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [len(r["completions"]) for r in records] == [2, 2]
    assert records[0]["prompt"] == CHAT and records[0]["prompt_text"].endswith(
        "<|im_start|>assistant\n")
    capsys.readouterr()
    assert main(["plan", "--model", str(path)]) == 0
    assert f"{original.num_parameters():,} parameters" in capsys.readouterr().out


def test_without_the_gguf_package_one_paragraph_names_the_extra(gguf_model, tmp_path,
                                                                monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` raises ImportError
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "the movie"}])
    assert main(["sample", "--model", str(gguf_model[0]), "--prompts", str(prompts), "--out",
                 str(tmp_path / "s.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'preflab[gguf]'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
