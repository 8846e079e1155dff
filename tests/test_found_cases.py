"""Found cases: inputs that once gave a traceback, a hang or a silently accepted value.

Each is kept as a plain test of today's behaviour through the public entry points: the data
loaders (``load_sft_dataset``, ``load_preference_dataset``, ``read_records``) and the
command line (``preflab.cli.main``), which must answer a bad value with exit code 2, one
paragraph on stderr, no traceback, and no run directory. The property tests
(``test_fuzz_data.py``, ``test_fuzz_config.py``) find such cases; this corpus keeps them
fixed whatever the fuzzers happen to generate next.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from preflab.algorithms.dpo import DPOConfig
from preflab.algorithms.ppo import PPOConfig
from preflab.cli import main
from preflab.config import parse_config
from preflab.data import TruncationPolicy, load_preference_dataset, load_sft_dataset, read_records
from preflab.errors import DataError
from tests.sft_data import sft_records, write_jsonl
from tests.test_dpo import pair_records

# --- data -----------------------------------------------------------------------------------
PC = {"prompt": "the movie was", "completion": "really good"}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def one_paragraph(error: DataError) -> str:
    message = str(error)
    assert "\n" not in message and "Traceback" not in message, message
    message.encode("utf-8")  # printable: no lone surrogate of the file's reaches the terminal
    return message


def test_a_lone_surrogate_escape_names_file_line_and_field(tmp_path, tiny_tokenizer):
    """json.loads accepts "\\ud800", a string no tokenizer (nor UTF-8) can encode."""
    bad = '{"prompt": "the \\ud800 movie", "completion": "good"}'
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(PC), bad])
    with pytest.raises(DataError) as info:
        load_sft_dataset(str(path), tiny_tokenizer, TruncationPolicy())
    message = one_paragraph(info.value)
    assert (info.value.path, info.value.line, info.value.field) == (str(path), 2, "prompt")
    assert message.startswith(f"{path}, line 2, field 'prompt': ") and "lone surrogate" in message


def test_json_nested_50000_deep_in_an_ignored_field_is_a_data_error(tmp_path, tiny_tokenizer):
    """json.loads raises RecursionError, though the field is not one a loader reads."""
    deep = "[" * 50_000 + "]" * 50_000
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(PC),
                                               json.dumps(PC)[:-1] + f', "extra": {deep}}}'])
    for load in (load_sft_dataset, lambda *a: (read_records(a[0]), None)):
        with pytest.raises(DataError) as info:
            load(str(path), tiny_tokenizer, TruncationPolicy())
        message = one_paragraph(info.value)
        assert (info.value.line, info.value.field) == (2, "extra")
        assert "JSON nested more than 100 levels deep" in message


def test_an_integer_of_more_than_4300_digits_is_a_data_error(tmp_path, tiny_tokenizer):
    """json.loads raises ValueError (Python's limit on int-from-string conversion)."""
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(PC)[:-1] + f', "n": {"1" * 4301}}}'])
    with pytest.raises(DataError) as info:
        load_sft_dataset(str(path), tiny_tokenizer, TruncationPolicy())
    message = one_paragraph(info.value)
    assert (info.value.line, info.value.field) == (1, "n")
    assert "a number with more than 4,300 digits" in message


def test_a_pair_whose_chosen_equals_rejected_is_skipped_and_counted(tmp_path, tiny_tokenizer):
    """An explicit-prompt pair with chosen == rejected trained on a zero-information pair."""
    same = {"prompt": "the movie was", "chosen": "really great", "rejected": "really great"}
    path = write_jsonl(tmp_path / "pairs.jsonl", [pair_records(2)[0], same, pair_records(2)[1]])
    examples, report = load_preference_dataset(str(path), tiny_tokenizer, TruncationPolicy())
    assert report.skipped_identical == 1 and report.records == 3 and len(examples) == 2
    assert "1 pairs skipped with chosen == rejected" in report.summary()


SECRET = "root:x:0:0:SECRET-TOKEN-abcdefghijklmnopqrstuvwxyz0123456789"


@pytest.mark.parametrize("content, suffix", [
    (f"{SECRET}\ndaemon:x:1:1:SECRET-TOKEN-second-line-0123456789abcdef\n", ".jsonl"),
    (f"{SECRET}\n", ".json"),
    (f"{SECRET}\n", ".csv"),
    (json.dumps({SECRET: 1}) + "\n", ".jsonl"),  # the line is a record: its key is quoted, cut
], ids=["lines-jsonl", "lines-json", "lines-csv", "as-a-key"])
def test_data_that_is_a_link_to_a_file_of_secrets_is_quoted_at_most_in_part(
        tmp_path, tiny_tokenizer, content, suffix):
    """--data pointing (through a symlink) at the wrong file must not print its lines."""
    secrets = tmp_path / "secrets.txt"
    secrets.write_text(content)
    link = tmp_path / f"data{suffix}"
    link.symlink_to(secrets)
    for load in (load_sft_dataset, load_preference_dataset):
        with pytest.raises(DataError) as info:
            load(str(link), tiny_tokenizer, TruncationPolicy())
        message = one_paragraph(info.value)
        assert SECRET not in message and "second-line" not in message, message
        assert len(message.replace(str(link), "")) < 300, message  # but for the path given
        if "SECRET" in message:  # a part of it, marked as such
            assert "(an excerpt: the first 40 of 60 characters)" in message, message


# --- configuration, through the command line ------------------------------------------------
@pytest.fixture
def inputs(tiny_model_dir, tmp_path):
    """A model and small valid data for each command: a bad setting is the only fault."""
    reward = tmp_path / "reward.py"
    reward.write_text("def score(prompts, completions, **kw):\n    return [1.0] * len(prompts)\n")
    return SimpleNamespace(
        model=tiny_model_dir, out=tmp_path / "run", reward=f"{reward}:score",
        data={"sft": write_jsonl(tmp_path / "sft.jsonl", sft_records(8)),
              "dpo": write_jsonl(tmp_path / "pairs.jsonl", pair_records(8)),
              "rm": write_jsonl(tmp_path / "pairs.jsonl", pair_records(8)),
              "ppo": write_jsonl(tmp_path / "prompts.jsonl",
                                 [{"prompt": "the movie was"}, {"prompt": "the plot is"}] * 4)})


def argv_for(command: str, inputs) -> list[str]:
    argv = [command, "--model", str(inputs.model), "--data", str(inputs.data[command]),
            "--output-dir", str(inputs.out), "--max-steps", "1", "--no-progress"]
    if command == "ppo":
        argv += ["--reward", inputs.reward, "--rollout-batch-size", "2", "--num-minibatches",
                 "1", "--batch-size", "2", "--response-length", "2"]
    return argv


def refused(argv: list[str], inputs, capsys) -> str:
    """Exit code 2, one paragraph on stderr, no traceback, no run directory: the error."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not inputs.out.exists()
    return err


def usage_error(argv: list[str], inputs, capsys) -> str:
    """argparse's refusal: SystemExit(2), its usage, then one "error:" line."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and not inputs.out.exists()
    return err.splitlines()[-1]


@pytest.mark.parametrize("command, option, value, expected", [
    ("dpo", "--learning-rate", "nan", "must be a finite number (positive); got nan"),
    ("rm", "--adam-beta1", "1.5", "must be in [0, 1); got 1.5"),
    ("dpo", "--adam-beta2", "-1", "must be in [0, 1); got -1.0"),
    ("rm", "--seed", str(2**70), f"must be in [0, 4294967295]; got {2**70}"),
    ("dpo", "--lora-dropout", "5", "must be in [0, 1); got 5.0"),
    ("rm", "--max-grad-norm", "nan", "must be a finite number (0 or more); got nan"),
    ("ppo", "--max-grad-norm", "-5", "must be 0 or more; got -5.0"),
    ("ppo", "--clip-range", "-1", "must be positive; got -1.0"),
    # argparse took -1e-3 for a flag: "expected one argument"
    ("ppo", "--learning-rate", "-1e-3", "must be positive; got -0.001"),
    ("sft", "--batch-size", "1" * 400, "must be a 64-bit integer (at least 1); got 1111111"),
], ids=lambda v: v if len(str(v)) < 30 else f"{str(v)[:10]}...")
def test_a_flag_out_of_range_is_refused(inputs, capsys, command, option, value, expected):
    err = refused([*argv_for(command, inputs), option, value], inputs, capsys)
    field = option[2:].replace("-", "_")
    assert err.startswith(f"preflab {command}: error: field '{field}': {option} {expected}"), err
    assert len(err) < 200, err  # a 400-digit value is shown cut


def config_file(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(f"seed: 3\n{line}\n", encoding="utf-8")
    return path


def _laughs(levels: int) -> str:
    """Aliases that stand for 10**levels strings, held as shared lists."""
    parts = ["&l0 [" + ", ".join(["lol"] * 10) + "]"]
    parts += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


@pytest.mark.parametrize("command, line, expected", [
    ("sft", "num_epochs: .nan",
     ", field 'num_epochs': must be a finite number (positive); got nan"),  # a traceback
    ("dpo", "num_epochs: .inf",
     ", field 'num_epochs': must be a finite number (positive); got inf"),  # a traceback
    ("rm", "weight_decay: -1", ", field 'weight_decay': must be 0 or more; got -1.0"),
    ("dpo", "num_epochs: 0", ", field 'num_epochs': must be positive; got 0.0"),  # ran 1 step
    ("rm", "lora_alpha: -2", ", field 'lora_alpha': must be 0 or more; got -2.0"),
    ("ppo", "kl_coef: .nan", ", field 'kl_coef': must be a finite number (0 or more); got nan"),
    ("ppo", "gamma: .nan", ", field 'gamma': must be a finite number (in [0, 1]); got nan"),
    ("ppo", "vf_coef: .nan", ", field 'vf_coef': must be a finite number (0 or more); got nan"),
    # Found by test_fuzz_config.py: PyYAML's own exceptions were tracebacks ...
    ("sft", "num_epochs: 2020-13-45",  # ValueError
     ": not valid YAML: cannot read '2020-13-45' as a timestamp (month must be in 1..12)"),
    ("dpo", "max_steps: !!timestamp soon", ": not valid YAML: cannot read 'soon' as a timestamp"),
    ("rm", "resume: !!bool maybe", ": not valid YAML: cannot read 'maybe' as a bool"),  # KeyError
    ("sft", "seed: !!int abc",
     ": not valid YAML: cannot read 'abc' as an int (invalid literal for int() with base 10: "
     "'abc')"),
    ("ppo", f"seed: {'1' * 4301}",  # ValueError: Python's limit of 4,300 digits
     ": not valid YAML: cannot read '11111111111111111...111111111111111111' as an int "
     "(Exceeds the limit (4300 digits) for integer string conversion: value has 4301 digits)"),
    # ... as was a float setting given an integer past 1.8e308 (OverflowError) ...
    ("dpo", f"learning_rate: {'1' * 400}", ", field 'learning_rate': must be a finite number "
     "(positive); got 111111111111111111...1111111111111111111"),
    # ... and a control character gave a two-line message
    ("sft", "lr_scheduler: \x07cosine",
     ": not valid YAML: the character '\\x07': special characters are not allowed"),
])
def test_a_bad_yaml_value_names_the_file_and_line(inputs, tmp_path, capsys, command, line,
                                                  expected):
    config = config_file(tmp_path, line)
    err = refused([*argv_for(command, inputs), "--config", str(config)], inputs, capsys)
    assert err == f"preflab {command}: error: {config}, line 2{expected}", err


def test_yaml_nested_50000_deep_is_a_config_error(inputs, tmp_path, capsys):
    """PyYAML composes nested collections recursively: RecursionError."""
    config = config_file(tmp_path, "lr_scheduler: " + "[" * 50_000 + "]" * 50_000)
    err = refused([*argv_for("sft", inputs), "--config", str(config)], inputs, capsys)
    assert err == f"preflab sft: error: {config}: not valid YAML: collections nested too deeply"


def test_a_billion_aliased_strings_are_quoted_in_a_few_characters(inputs, tmp_path, capsys):
    """Nine levels of aliases load at once (the lists are shared); the message quoted the
    value's whole repr, a billion strings long, and never finished."""
    config = config_file(tmp_path, f"batch_size: {_laughs(9)}")
    err = refused([*argv_for("rm", inputs), "--config", str(config)], inputs, capsys)
    assert err.startswith(f"preflab rm: error: {config}, line 2, field 'batch_size': [['lol', ")
    assert err.endswith("is a list (expected a int)") and len(err) < 300, err


def test_a_config_path_too_long_for_the_os_is_a_config_error(inputs, capsys):
    """Path.is_file() raised OSError: File name too long."""
    name = "c" * 5000 + ".yaml"
    err = refused([*argv_for("sft", inputs), "--config", name], inputs, capsys)
    assert err == f"preflab sft: error: {name}: cannot be read: File name too long"


def test_a_reward_path_too_long_for_the_os_is_a_config_error(inputs, capsys):
    """check_reward_specs looked for a model directory there: OSError."""
    err = refused([*argv_for("ppo", inputs), "--reward", "r" * 5000], inputs, capsys)
    assert err.startswith("preflab ppo: error: cannot look up 'rrrrrrrr")
    assert err.endswith(": File name too long") and len(err) < 200, err


def test_a_lone_surrogate_in_a_yaml_path_is_a_config_error(inputs, tmp_path, capsys):
    """`output_dir: "run\\ud800"` got through to mkdir: UnicodeEncodeError, a traceback."""
    config = tmp_path / "c.yaml"
    config.write_text(f'output_dir: "{inputs.out}\\ud800"\n', encoding="utf-8")
    err = refused(["sft", "--model", str(inputs.model), "--data", str(inputs.data["sft"]),
                   "--config", str(config)], inputs, capsys)
    assert err.startswith(f"preflab sft: error: {config}, line 1, field 'output_dir': '")
    assert err.endswith("\\ud800' holds a lone surrogate, which is not a character "
                        "(expected valid Unicode text)"), err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("run")] == []
    # A name's bytes that are not UTF-8, as the OS hands them over (U+DC80..U+DCFF), pass.
    cfg = parse_config(DPOConfig, [*argv_for("dpo", inputs)[1:], "--output-dir", "caf\udce9"],
                       prog="preflab dpo")
    assert cfg.output_dir == "caf\udce9"


@pytest.mark.parametrize("command, option", [
    ("sft", "--device"),  # was device=[]: a list where a string belongs
    ("dpo", "--learning-rate"),  # was a TypeError in the range check
    ("rm", "--config"),  # was quietly no config file
])
def test_an_option_given_double_dash_as_its_value_is_a_usage_error(inputs, capsys, command,
                                                                   option):
    """`--flag=--`: Python 3.11's argparse drops the "--" and hands on [] unconverted."""
    error = usage_error([*argv_for(command, inputs), f"{option}=--"], inputs, capsys)
    assert error == f"preflab {command}: error: argument {option}: expected one argument"


@pytest.mark.parametrize("command, typed", [("dpo", "--learning"), ("ppo", "--lr")])
def test_a_flag_prefix_is_an_unknown_flag(inputs, capsys, command, typed):
    """`--learning 1e-3` became --learning-rate; `--lr 1e-3` was an error about
    --lr-scheduler ("ambiguous option")."""
    error = usage_error([*argv_for(command, inputs), typed, "1e-3"], inputs, capsys)
    assert error == f"preflab {command}: error: unrecognized arguments: {typed} 1e-3"
    assert "lr-scheduler" not in error


@pytest.mark.parametrize("cls, command", [(DPOConfig, "dpo"), (PPOConfig, "ppo")])
def test_yaml_1e_minus_5_without_a_dot_is_the_number(inputs, tmp_path, cls, command):
    """PyYAML (YAML 1.1) reads 1e-5 as the string '1e-5'."""
    config = config_file(tmp_path, "learning_rate: 1e-5")
    cfg = parse_config(cls, [*argv_for(command, inputs)[1:], "--config", str(config)],
                       prog=f"preflab {command}")
    assert type(cfg.learning_rate) is float and cfg.learning_rate == 1e-05
    assert cfg.seed == 3 and math.isfinite(cfg.learning_rate)
