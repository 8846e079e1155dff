"""The command line as a user meets it: help, bad input as one paragraph and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest

from preflab.algorithms.sft import SFTConfig
from preflab.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "preflab.cli", *args], capture_output=True, text=True)


def test_top_level_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "sft" in out and "demo" in out


def test_unknown_command_exits_2(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_sft_help_documents_every_flag_with_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sft", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for f in fields(SFTConfig):
        assert "--" + f.name.replace("_", "-") in out, f.name
    assert out.count("(default:") >= len(fields(SFTConfig))


@pytest.mark.parametrize(
    "content, line, field",
    [
        ('{"prompt": "the movie", "completion": "was great"}\n{"prompt": "a film"}\n', 2, "completion"),
        ('{"prompt": "the movie", "completion": "was great"}\n\n{"prompt": "x", "completion": 3}\n', 3, "completion"),
        ('{"prompt": "the movie", "completion": "was great"}\n{"prompt": "a", "completion": ""}\n', 2, "completion"),
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": "b"}\n{oops}\n', 3, None),
        (b'{"prompt": "a", "completion": "b"}\n{"prompt": "\xff\xfe", "completion": "b"}\n', 2, None),
        ('{"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]}\n', 1, "messages"),
        ('{"prompt": "' + "the " * 100 + '", "completion": "great"}\n', 1, "prompt"),
    ],
    ids=["missing-field", "wrong-type", "empty-completion", "invalid-json", "non-utf8",
         "roles-out-of-order", "prompt-too-long"],
)
def test_malformed_data_is_one_paragraph_exit_2(tiny_model_dir, tmp_path, content, line, field):
    data = tmp_path / "bad.jsonl"
    data.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = run_cli("sft", "--model", str(tiny_model_dir), "--data", str(data),
                     "--output-dir", str(tmp_path / "out"), "--max-length", "64", "--no-progress")
    assert result.returncode == 2, result.stderr
    err = result.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err  # one paragraph
    assert str(data) in err and f"line {line}" in err
    if field:
        assert field in err
    # a corrected re-run is not refused: the failed one left no run behind
    assert not (tmp_path / "out" / "config.yaml").exists()


def test_bad_flag_value_exits_2(tmp_path):
    result = run_cli("sft", "--model", "m", "--data", "d", "--output-dir", str(tmp_path), "--batch-size", "0")
    assert result.returncode == 2 and "--batch-size must be at least 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_model_exits_2(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    result = run_cli("sft", "--model", str(tmp_path / "nope"), "--data", str(data),
                     "--output-dir", str(tmp_path / "o"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
