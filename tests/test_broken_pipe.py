"""Output piped into a reader that stops early (``preflab --help | head``) ends quietly: no
traceback, no "Exception ignored", exit 141 (``cli.EXIT_STDOUT_CLOSED``) where preflab meets
the closed pipe, for ``preflab`` and for the modules' own ``python -m`` entries."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from preflab import cli

ENTRIES = [
    ["preflab.cli", "--help"],
    ["preflab.cli", "--version"],
    ["preflab.cli", "report", "--help"],
    ["preflab.commands.sample", "--help"],
    ["preflab.commands.world", "--help"],
]


def child_env(buffered: bool) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    return env


def run_into_closed_pipe(argv: list[str], buffered: bool) -> tuple[int, str]:
    """Run ``python -m ARGV`` with stdout a pipe whose reader closed before it wrote."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", *argv], stdout=write,
                              stderr=subprocess.PIPE, text=True, env=child_env(buffered),
                              timeout=120)
    finally:
        os.close(write)
    return proc.returncode, proc.stderr


def quiet(stderr: str) -> bool:
    return "Traceback" not in stderr and "Exception ignored" not in stderr


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("argv", ENTRIES, ids=lambda a: " ".join(a))
def test_a_closed_stdout_ends_quietly(argv, buffered):
    code, stderr = run_into_closed_pipe(argv, buffered)
    assert quiet(stderr), stderr
    # preflab prints its own usage and version; the rest is argparse's help, which drops its
    # own write errors (unbuffered, nothing is left to flush) and may exit 0
    by_argparse = argv not in (["preflab.cli", "--help"], ["preflab.cli", "--version"])
    assert code == cli.EXIT_STDOUT_CLOSED or (by_argparse and code == 0)


def test_a_command_whose_reader_leaves_exits_141(tmp_path):
    """A command's own output (not argparse's): ``preflab plan`` prints its table."""
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
        "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 1000}))
    for buffered in (True, False):
        code, stderr = run_into_closed_pipe(["preflab.cli", "plan", "--model", str(tmp_path)],
                                            buffered)
        assert code == cli.EXIT_STDOUT_CLOSED and quiet(stderr), stderr


def test_help_piped_into_a_reader_that_reads_a_little():
    """``python -m preflab.cli --help | head -c 16``: the reader takes a few bytes and closes."""
    proc = subprocess.Popen([sys.executable, "-m", "preflab.cli", "--help"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(16).startswith(b"usage: preflab")
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in (0, cli.EXIT_STDOUT_CLOSED)  # 0: it had written it all
    assert quiet(stderr), stderr


def test_a_broken_pipe_that_is_not_stdout_is_raised():
    """A BrokenPipeError from another pipe or socket is an error, not a closed stdout."""
    def fails():
        raise BrokenPipeError("a socket")

    with pytest.raises(BrokenPipeError, match="a socket"):
        cli.run_module(fails)
