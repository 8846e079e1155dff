"""Config: flags, YAML, precedence, validation before any model loads."""

from __future__ import annotations

import pytest

from preflab.algorithms.sft import SFTConfig
from preflab.config import parse_config
from preflab.errors import ConfigError

BASE = ["--model", "m", "--data", "d.jsonl", "--output-dir", "out"]


def parse(argv):
    return parse_config(SFTConfig, argv, prog="preflab sft")


def test_defaults_and_flags():
    cfg = parse(BASE + ["--lora-rank", "8", "--no-completion-only", "--precision", "bf16-true"])
    assert cfg.lora_rank == 8 and cfg.completion_only is False and cfg.precision == "bf16-true"
    assert cfg.learning_rate == 2e-4  # the SFT default overrides the shared one


def test_yaml_then_flags_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: from-yaml\ndata: d.jsonl\noutput-dir: o\nseed: 7\nbatch_size: 4\n")
    cfg = parse(["--config", str(path), "--batch-size", "16"])
    assert (cfg.model, cfg.seed, cfg.batch_size) == ("from-yaml", 7, 16)


@pytest.mark.parametrize(
    "text, line, field",
    [
        ("model: m\nseeed: 3\n", 2, "seeed"),
        ("model: m\nseed: three\n", 2, "seed"),
        ("model: m\nprecision: float64\n", 2, "precision"),
        ("model: m\ndtype: bfloat16\n", 2, "dtype"),  # replaced: the error says by what
    ],
)
def test_yaml_errors_name_line_and_field(tmp_path, text, line, field):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        parse(BASE + ["--config", str(path)])
    assert err.value.line == line and err.value.field == field
    assert str(path) in str(err.value) and f"line {line}" in str(err.value)


def test_the_replaced_dtype_flag_says_what_replaces_it(tmp_path):
    for argv in (BASE + ["--dtype", "bfloat16"], BASE + ["--dtype=float32"]):
        with pytest.raises(ConfigError, match="replaced by --precision") as err:
            parse(argv)
        assert err.value.field == "dtype" and "bf16-true" in str(err.value)
    path = tmp_path / "c.yaml"
    path.write_text("model: m\ndtype: bfloat16\n")
    with pytest.raises(ConfigError, match="bf16-mixed keeps float32 master weights"):
        parse(BASE + ["--config", str(path)])


def test_bad_yaml_syntax(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m\n  bad: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse(BASE + ["--config", str(path)])


@pytest.mark.parametrize(
    "extra, field",
    [
        (["--batch-size", "0"], "batch_size"),
        (["--max-steps", "0"], "max_steps"),
        (["--learning-rate", "-1"], "learning_rate"),
        (["--max-prompt-length", "600"], "max_prompt_length"),
        (["--resume", "--overwrite"], "resume"),
        (["--report-to", "mlflow"], "report_to"),
    ],
)
def test_validation(extra, field):
    with pytest.raises(ConfigError) as err:
        parse(BASE + extra)
    assert err.value.field == field


def test_missing_required():
    with pytest.raises(ConfigError, match="--model is required"):
        parse(["--data", "d", "--output-dir", "o"])
