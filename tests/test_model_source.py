"""Where a model, data or run directory is said to be: checked before anything loads.

A hub id on a machine that cannot reach the hub used to take about 50 s and a dozen retry
lines to fail; a missing local directory was reported as "Repo id must use alphanumeric
chars". Every hub test here points ``HF_ENDPOINT`` (or a proxy) at this machine: no test
talks to the real hub.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from preflab import models
from preflab.algorithms.dpo import DPOConfig
from preflab.cli import main
from preflab.config import check_output_dir, check_paths, parse_config
from preflab.errors import ConfigError, ModelLoadError
from preflab.models import looks_like_local_path

UNKNOWN_ID = "preflab-tests/no-such-model"  # never in a real cache
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture(autouse=True)
def hub_env(monkeypatch):
    for name in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY",
                 "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(models, "_HUB_STATUS", {})  # each test asks afresh


@pytest.fixture
def data_file(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "the movie", "completion": "was great"}\n' * 4)
    return data


def sft(model: str, data: Path, out: Path, capsys) -> str:
    assert main(["sft", "--model", model, "--data", str(data), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_a_missing_local_directory_says_so(data_file, tmp_path, capsys):
    """Was: "Repo id must use alphanumeric chars ..." from the hub client."""
    for given in ("./no_such_dir", str(tmp_path / "nope"), "~/no_such_preflab_dir", "a/b/c"):
        err = sft(given, data_file, tmp_path / "o", capsys)
        assert "--model: no such directory" in err and given in err


def test_a_file_is_not_a_model_directory(data_file, tmp_path, capsys):
    assert "a file, not a model directory" in sft(str(data_file), data_file, tmp_path / "o", capsys)


def test_an_unreachable_hub_fails_in_seconds_with_a_hint(data_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", CLOSED)
    start = time.perf_counter()
    err = sft(UNKNOWN_ID, data_file, tmp_path / "o", capsys)
    assert time.perf_counter() - start < 10  # was ~50 s of download retries
    assert f"{CLOSED} cannot be reached" in err and "give a local model directory" in err
    assert "HF_HUB_OFFLINE=1" in err
    assert not (tmp_path / "o").exists()  # failed before the run directory was made


def test_the_default_hub_answers_or_fails_in_seconds():
    """On an offline machine the real default endpoint fails fast (no name resolution, or no
    connection within models.HUB_TIMEOUT_S); where the hub answers, the check passes."""
    start = time.perf_counter()
    try:
        models.check_model_source(UNKNOWN_ID)
    except ModelLoadError as exc:
        assert "https://huggingface.co cannot be reached" in str(exc)
    assert time.perf_counter() - start < 10


def test_hf_hub_offline_without_a_cached_copy(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set") as err:
        models.check_model_source(UNKNOWN_ID, flag="--ref-model")
    assert err.value.field == "ref_model"


def test_a_proxy_is_what_is_checked(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example")
    monkeypatch.setenv("HTTPS_PROXY", CLOSED)
    with pytest.raises(ModelLoadError, match="127.0.0.1:9"):
        models.check_model_source(UNKNOWN_ID)


def test_a_reachable_hub_passes(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        models.check_model_source(UNKNOWN_ID)  # no error: the loader reports what the hub says


def test_a_cached_hub_model_needs_no_hub(tiny_model_dir, tmp_path, monkeypatch):
    """In the local Hugging Face cache: accepted offline, and loaded from the cache alone."""
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--preflab-tests--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", CLOSED)
    models.check_model_source("preflab-tests/tiny")
    assert models._cache_only("preflab-tests/tiny")
    start = time.perf_counter()
    tokenizer = models.load_tokenizer("preflab-tests/tiny")
    model = models.load_causal_lm("preflab-tests/tiny")
    assert time.perf_counter() - start < 10  # no retries before the cache is used
    assert model.config.vocab_size == len(tokenizer)


def test_library_loaders_check_too(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", CLOSED)
    with pytest.raises(ModelLoadError, match="no such directory"):
        models.load_tokenizer("./no_such_dir")
    with pytest.raises(ModelLoadError, match="cannot be reached"):
        models.load_causal_lm(UNKNOWN_ID)


def test_every_model_field_is_checked(tiny_model_dir, data_file, tmp_path, capsys):
    """Paths are checked when the command starts, before anything loads or is written."""
    cfg = parse_config(DPOConfig, ["--model", str(tiny_model_dir), "--data", str(data_file),
                                   "--output-dir", str(tmp_path / "o"), "--ref-model", "./gone"],
                       prog="dpo")
    with pytest.raises(ModelLoadError, match="--ref-model: no such directory") as err:
        check_paths(cfg)
    assert err.value.field == "ref_model"
    assert main(["dpo", "--model", str(tiny_model_dir), "--data", str(data_file),
                 "--output-dir", str(tmp_path / "o"), "--ref-model", "./gone"]) == 2
    assert "--ref-model: no such directory" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text, local", [
    ("gpt2", False), ("org/name", False), ("Qwen/Qwen2.5-0.5B", False),
    ("./m", True), ("/m", True), ("~/m", True), ("a/b/c", True), ("has space", True),
    ("..", True),
])
def test_what_looks_like_a_local_path(text, local):
    assert looks_like_local_path(text) is local


# --- data and output paths -----------------------------------------------------------------

def test_missing_local_data_names_the_flag(tiny_model_dir, tmp_path, capsys):
    for data in ("./gone.jsonl", "pairs.jsonl", str(tmp_path / "gone")):
        assert main(["sft", "--model", str(tiny_model_dir), "--data", data,
                     "--output-dir", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert "--data: no such file or directory" in err and "Traceback" not in err


def test_a_data_hub_name_is_left_to_the_data_layer(tiny_model_dir, tmp_path):
    cfg = parse_config(DPOConfig, ["--model", str(tiny_model_dir), "--data", "org/pairs",
                                   "--output-dir", str(tmp_path / "o")], prog="dpo")
    assert cfg.data == "org/pairs"


def test_an_output_dir_under_a_file(tiny_model_dir, data_file, tmp_path, capsys):
    err = sft(str(tiny_model_dir), data_file, data_file / "run", capsys)
    assert "--output-dir" in err and f"{data_file} is a file" in err


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc here")
def test_an_output_dir_under_proc(tiny_model_dir, data_file, capsys):
    """/proc passes os.access for root, but no directory can be made there."""
    err = sft(str(tiny_model_dir), data_file, Path("/proc/preflab-run"), capsys)
    assert "--output-dir: cannot write in /proc" in err


def test_an_output_dir_in_a_read_only_directory(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root passes os.access on any mode: let the check see what a user would
        real = os.access
        monkeypatch.setattr(os, "access",
                            lambda p, mode, **kw: False if str(p) == str(locked) else real(p, mode, **kw))
    with pytest.raises(ConfigError, match="cannot write in"):
        check_output_dir(str(locked / "run"), "output_dir")


def test_validation_creates_nothing(tmp_path):
    check_output_dir(str(tmp_path / "a" / "b" / "run"), "output_dir")
    assert not (tmp_path / "a").exists()
