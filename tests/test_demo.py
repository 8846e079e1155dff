"""`preflab demo` is `preflab compare` on the built-in world with the quick preset; the compare
pipeline itself is tested end to end in tests/test_compare.py."""

from __future__ import annotations

import pytest

from preflab.commands import demo
from preflab.errors import ConfigError


def _argv(cfg) -> list[str]:
    """The compare flags a parsed config holds, in the order the demo passes them."""
    argv = ["--world", cfg.world, "--output-dir", cfg.output_dir, "--preset", cfg.preset,
            "--jobs", str(cfg.jobs)]
    return argv + (["--fresh"] if cfg.fresh else []) + ([] if cfg.progress else ["--no-progress"])


def test_demo_runs_the_quick_comparison_on_its_own_world(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("preflab.compare.run.run_and_print", lambda cfg: seen.append(_argv(cfg)) or 0)
    out = tmp_path / "demo"
    assert demo.main(["--output-dir", str(out), "--no-progress"]) == 0
    assert seen == [["--world", str(out / "world"), "--output-dir", str(out), "--preset", "quick",
                     "--jobs", "0", "--no-progress"]]


def test_demo_fresh_clears_an_older_demo_and_refuses_it_otherwise(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("preflab.compare.run.run_and_print", lambda cfg: seen.append(_argv(cfg)) or 0)
    out = tmp_path / "demo"
    (out / "sft").mkdir(parents=True)
    (out / "scores.json").write_text("{}")
    with pytest.raises(ConfigError, match="older preflab demo"):
        demo.main(["--output-dir", str(out)])
    assert demo.main(["--output-dir", str(out), "--fresh"]) == 0
    assert not (out / "sft").exists() and not (out / "scores.json").exists()
    assert seen[-1][-1] == "--fresh"
