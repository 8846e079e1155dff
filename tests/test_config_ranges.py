"""Every number a command takes has a declared range, checked in one place before anything loads.

Bad values reach the user as one line naming the flag (or the YAML file and line) and exit
code 2, never a traceback or a run that quietly does something else (NaN gradient clipping
turned off, ``--num-epochs 0`` running one step).
"""

from __future__ import annotations

import math
from dataclasses import fields

import pytest

from preflab.algorithms.dpo import DPOConfig
from preflab.algorithms.grpo import GRPOConfig
from preflab.algorithms.kto import KTOConfig
from preflab.algorithms.ppo import PPOConfig
from preflab.algorithms.rloo import RLOOConfig
from preflab.algorithms.rm import RMConfig
from preflab.algorithms.sft import SFTConfig
from preflab.cli import main
from preflab.compare.settings import CompareConfig
from preflab.config import (
    Range,
    TrainConfig,
    _field_type,
    build_parser,
    check_ranges,
    config_from_dict,
    parse_config,
)
from preflab.errors import ConfigError

CONFIGS = (TrainConfig, SFTConfig, DPOConfig, RMConfig, PPOConfig, KTOConfig, RLOOConfig,
           GRPOConfig, CompareConfig)


@pytest.fixture
def sft_args(tiny_model_dir, tmp_path):
    """Valid `preflab sft` flags for one step: a bad value added to them is the only fault."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "the movie", "completion": "was great"}\n' * 8)
    return ["--model", str(tiny_model_dir), "--data", str(data), "--output-dir",
            str(tmp_path / "run"), "--max-steps", "1", "--no-progress"]


@pytest.fixture
def ppo_args(sft_args, tmp_path):
    reward = tmp_path / "reward.py"
    reward.write_text("def score(prompts, completions, **kw):\n    return [1.0] * len(prompts)\n")
    return [*sft_args, "--reward", f"{reward}:score", "--rollout-batch-size", "2",
            "--num-minibatches", "1", "--batch-size", "2", "--response-length", "2"]


def exits_2(argv: list[str], capsys) -> str:
    """Run the CLI; assert exit code 2, one paragraph, no traceback; return stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# --- through the command line ---------------------------------------------------------------

@pytest.mark.parametrize("flag, value, expected", [
    ("--learning-rate", "nan", "must be a finite number (positive); got nan"),  # was a traceback
    ("--learning-rate", "-1e-3", "must be positive; got -0.001"),  # was "expected one argument"
    ("--adam-beta1", "1.5", "must be in [0, 1); got 1.5"),  # was a traceback
    ("--adam-beta2", "-1", "must be in [0, 1); got -1.0"),  # was a traceback
    ("--seed", str(2**70), "must be in [0, 4294967295]"),  # was a traceback
    ("--lora-dropout", "5", "must be in [0, 1); got 5.0"),  # was a traceback
    ("--max-grad-norm", "nan", "must be a finite number (0 or more)"),  # clipping quietly off
    ("--max-grad-norm", "-5", "must be 0 or more; got -5.0"),  # clipping quietly off
    ("--weight-decay", "-1", "must be 0 or more"),  # accepted
    ("--lora-alpha", "-2", "must be 0 or more"),  # accepted: a negative LoRA scale
    ("--max-length", "1", "must be at least 2"),  # failed only after the tokenizer loaded
    ("--batch-size", str(2**70), "must be a 64-bit integer (at least 1)"),
])
def test_sft_flag_out_of_range(sft_args, capsys, flag, value, expected):
    err = exits_2(["sft", *sft_args, flag, value], capsys)
    assert f"{flag} {expected}" in err


@pytest.mark.parametrize("flag, value, expected", [
    ("--clip-range", "-1", "must be positive"),  # accepted
    ("--kl-coef", "nan", "must be a finite number (0 or more)"),  # accepted
    ("--gamma", "nan", "must be a finite number (in [0, 1])"),  # accepted
    ("--gamma", "1.5", "must be in [0, 1]"),
    ("--vf-coef", "nan", "must be a finite number (0 or more)"),  # accepted
    ("--missing-eos-penalty", "-inf", "must be a finite number; got -inf"),  # accepted
    ("--eval-temperature", "-1", "must be 0 or more"),  # was blamed on --temperature
])
def test_ppo_flag_out_of_range(ppo_args, capsys, flag, value, expected):
    err = exits_2(["ppo", *ppo_args, flag, value], capsys)
    assert f"{flag} {expected}" in err


def test_a_negative_number_in_scientific_notation_is_a_value(ppo_args, tmp_path):
    """argparse took -1e-3 for a flag ("expected one argument"); now it is the value."""
    argv = [a if a != str(tmp_path / "run") else str(tmp_path / "r2") for a in ppo_args]
    for text, value in (("-1e-3", -1e-3), ("-.5e2", -50.0), ("-2E+1", -20.0)):
        cfg = parse_config(PPOConfig, [*argv, "--missing-eos-penalty", text], prog="ppo")
        assert cfg.missing_eos_penalty == value


@pytest.mark.parametrize("typed", ["--learning", "--lr", "--learn"])
def test_flag_prefixes_are_not_flags(sft_args, capsys, typed):
    """`--learning 1e-3` silently became --learning-rate; `--lr` blamed --lr-scheduler."""
    with pytest.raises(SystemExit) as exit_info:
        main(["sft", *sft_args, typed, "1e-3"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the usage lines
    assert error == f"preflab sft: error: unrecognized arguments: {typed} 1e-3"


def test_compare_numbers_are_checked_too(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = exits_2(["compare", "--world", "w", "--output-dir", "cmp", "--judge-share", "nan"],
                  capsys)
    assert "--judge-share must be a finite number (in (0, 1)); got nan" in err
    err = exits_2(["compare", "--world", "w", "--output-dir", "cmp", "--max-length", "1"], capsys)
    assert "--max-length must be 0, or at least 2; got 1" in err


# --- through a YAML file ----------------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    ("num_epochs: .nan", "must be a finite number (positive); got nan"),  # was a traceback
    ("num_epochs: .inf", "must be a finite number (positive); got inf"),  # was a traceback
    ("num_epochs: 0", "must be positive; got 0.0"),  # ran one step
    ("learning_rate: fast", "'fast' is a str (expected a number)"),
])
def test_yaml_value_out_of_range_names_file_line_and_field(sft_args, tmp_path, capsys, line,
                                                           message):
    config = tmp_path / "c.yaml"
    config.write_text(f"seed: 3\n{line}\n")
    err = exits_2(["sft", *sft_args, "--config", str(config)], capsys)
    field = line.split(":")[0]
    assert f"{config}, line 2, field '{field}': {message}" in err


def test_yaml_reads_1e_minus_5_as_a_number(sft_args, tmp_path):
    """PyYAML (YAML 1.1) needs a dot to see a float: 1e-5 arrived as the string '1e-5'."""
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 1e-5\nlora_alpha: 16\nweight_decay: '0.1'\n")
    cfg = parse_config(SFTConfig, [*sft_args, "--config", str(config)], prog="sft")
    assert (cfg.learning_rate, cfg.lora_alpha, cfg.weight_decay) == (1e-5, 16.0, 0.1)


def test_a_flag_overrides_the_file_and_is_what_the_error_names(sft_args, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: .nan\n")
    cfg = parse_config(SFTConfig, [*sft_args, "--config", str(config), "--learning-rate", "1e-3"],
                       prog="sft")
    assert cfg.learning_rate == 1e-3
    config.write_text("learning_rate: 1.0e-3\n")
    with pytest.raises(ConfigError) as err:
        parse_config(SFTConfig, [*sft_args, "--config", str(config), "--learning-rate", "0"],
                     prog="sft")
    assert err.value.path is None and "--learning-rate must be positive" in str(err.value)


def test_library_callers_get_the_same_checks():
    with pytest.raises(ConfigError) as err:
        config_from_dict(SFTConfig, {"model": "m", "data": "d", "output_dir": "o",
                                     "lora_dropout": 1.0})
    assert err.value.field == "lora_dropout"
    with pytest.raises(ConfigError, match="--kl-coef must be a finite number"):
        check_ranges(PPOConfig(kl_coef=math.nan))


# --- the declarations -------------------------------------------------------------------------

def numeric_fields(cls):
    return [f for f in fields(cls) if _field_type(cls, f) in (int, float)]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_numeric_field_declares_its_range_and_its_default_is_in_it(cls):
    """An override in a subclass (SFT's learning rate) must restate the range: the field's
    metadata is replaced whole."""
    for f in numeric_fields(cls):
        allowed = f.metadata.get("range")
        assert isinstance(allowed, Range), f"{cls.__name__}.{f.name} declares no range"
        assert f.default in allowed, f"{cls.__name__}.{f.name}: default {f.default} not {allowed}"
    check_ranges(cls())  # the defaults pass the one check


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_help_shows_each_range(cls):
    text = " ".join(build_parser(cls, "p", "").format_help().split())
    for f in numeric_fields(cls):
        assert f"; {f.metadata['range']})" in text, f.name


@pytest.mark.parametrize("allowed, inside, outside, text", [
    (Range(ge=1), [1, 10**9], [0, -1], "at least 1"),
    (Range(gt=0), [1e-12, 3.0], [0.0, -1e-3, math.nan, math.inf], "positive"),
    (Range(ge=0, lt=1), [0.0, 0.999], [1.0, -0.1], "in [0, 1)"),
    (Range(gt=0, le=1), [1.0, 0.5], [0.0, 1.5], "in (0, 1]"),
    (Range(ge=1, also=(-1,)), [-1, 1, 5], [0, -2], "-1, or at least 1"),
    (Range(finite=True), [-1e300, 0.0], [math.nan, -math.inf], "any finite number"),
    (Range(le=2**32 - 1, ge=0), [0, 2**32 - 1], [2**70, -1], "in [0, 4294967295]"),
])
def test_range_membership_and_text(allowed, inside, outside, text):
    assert all(v in allowed for v in inside) and not any(v in allowed for v in outside)
    assert str(allowed) == text


def test_a_percent_sign_in_help_text_is_shown_as_written(capsys):
    from dataclasses import dataclass

    from preflab.config import arg

    @dataclass
    class WithPercent:
        share: float = arg(0.1, "Share held out (10% by default).", ge=0, le=1)

    parser = build_parser(WithPercent, "prog", "")
    assert "(10% by default)" in parser.format_help()
