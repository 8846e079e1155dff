"""Property: no config file and no command line, however malformed, makes ``parse_config``
raise anything but a ``PreflabError`` -- and a config it accepts holds only values in range.

Hypothesis writes YAML files for every command's config class (``sft``, ``dpo``, ``rm``,
``ppo``, ``compare``): mappings of real settings and unknown keys to values of every YAML
type (integers past 2**64 and past 4,300 digits, ``.nan``/``.inf``, ``1e-5`` without a dot,
dates real and impossible, explicit tags, escapes of lone surrogates, nested and aliased
collections (nesting 50,000 deep, aliases standing for a billion strings), documents that are
no mapping, invalid YAML and undecodable bytes. It also writes command lines of real flags
with odd values (``nan``, ``-1e-3``, ``2**70``, huge integers, empty and non-ASCII strings,
``--flag=--``) and words that are not flags (``--learning``, ``--lr``).

The outcome of each case must be one of:
  * a config whose every field has its declared type, choice and range, and whose strings
    hold no lone surrogate (a YAML "\\ud800" escape) but those the OS makes of bytes;
  * a ``PreflabError``: one paragraph, printable, quoting no more than a short excerpt;
  * argparse's usage error: ``SystemExit(2)`` (its "error:" line is on stderr).

Derandomized, so every run of the same selection of tests tries the same cases (Hypothesis
also draws on literals of the modules loaded, so other test files in the same run change
them); the counts are summed and checked by the last test
(``test_every_config_fuzz_test_ran_its_cases``).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections import Counter
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preflab.algorithms.dpo import DPOConfig
from preflab.algorithms.grpo import GRPOConfig
from preflab.algorithms.kto import KTOConfig
from preflab.algorithms.ppo import PPOConfig
from preflab.algorithms.rloo import RLOOConfig
from preflab.algorithms.rm import RMConfig
from preflab.algorithms.sft import SFTConfig
from preflab.compare.settings import CompareConfig
from preflab.config import Range, _field_type, check_ranges, flag, parse_config
from preflab.errors import PreflabError

CONFIGS = {"sft": SFTConfig, "dpo": DPOConfig, "rm": RMConfig, "ppo": PPOConfig,
           "kto": KTOConfig, "rloo": RLOOConfig, "grpo": GRPOConfig, "compare": CompareConfig}
GENERATORS = ("yaml", "argv")
EXAMPLES = 70  # per config class and generator: 8 x 2 x 70 = 1,120 cases
CASES: Counter[str] = Counter()  # "command-generator" -> generated cases run
OUTCOMES: Counter[tuple[str, str]] = Counter()  # (command, "config" | "error" | "usage")
EXPECTED_CASES = {f"{name}-{gen}": EXAMPLES for name in CONFIGS for gen in GENERATORS}


def fuzz():
    return settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# --- the fields of each class ---------------------------------------------------------------
def _kinds(cls) -> dict[str, type]:
    return {f.name: _field_type(cls, f) for f in fields(cls)}


KINDS = {name: _kinds(cls) for name, cls in CONFIGS.items()}
META = {name: {f.name: f.metadata for f in fields(cls)} for name, cls in CONFIGS.items()}


def valid_number(kind: type, allowed: Range):
    """Numbers ``allowed`` takes (near its bounds, mostly), as Python values."""
    low = allowed.ge if allowed.ge is not None else allowed.gt
    high = allowed.le if allowed.le is not None else allowed.lt
    if kind is int:
        lo = None if low is None else math.ceil(low) + (allowed.gt is not None)
        hi = None if high is None else math.floor(high) - (allowed.lt is not None)
        inside = st.integers(lo if lo is not None else -(2**40), hi if hi is not None else 2**40)
        near = [v for v in (lo, hi, lo and lo + 1) if v is not None]
    else:
        inside = st.floats(low, high, exclude_min=allowed.gt is not None,
                           exclude_max=allowed.lt is not None, allow_nan=False,
                           allow_infinity=False)
        near = [v for v in (low, high) if v is not None]
    extra = [*allowed.also, *near]
    return st.one_of(inside, st.sampled_from(extra)) if extra else inside


def valid_value(command: str, name: str):
    """A value the field ``name`` takes on its own (other fields may still refuse it)."""
    kind, meta = KINDS[command][name], META[command][name]
    if meta.get("choices"):
        return st.sampled_from(meta["choices"])
    if kind is bool:
        return st.booleans()
    if kind in (int, float):
        return valid_number(kind, meta.get("range", Range()))
    if kind is dict:
        return st.sampled_from([{}, {"dpo": {"beta": 0.1}}, {"ppo": {"kl_coef": 0.02}}])
    # Strings: a lone surrogate (a YAML "\\ud800" escape) is refused, but not the ones the OS
    # makes of a name's bytes that are not UTF-8 (U+DC80..U+DCFF).
    return st.sampled_from(["", "x", "r.py:score", "path/to/data.jsonl", "org/name", "runs/a",
                            "caf\udce9", "\ud800", "runs/\udfff", "\u65e5\u672c"])


# --- odd values -----------------------------------------------------------------------------
HUGE = [2**63, 2**64 + 1, 2**70, -(2**63) - 1, 10**400, 10**4000]
ODD_TEXT = ["", " ", "  3 ", "nan", "NaN", "-nan", "inf", "-inf", "+inf", "Infinity",
            "-Infinity", "1e-3", "-1e-3", "1e-5", "-.5e2", "-2E+1", "1e400", "-1e400", "2**70",
            "1_000", "0x10", "0o17", "017", "1:30", "\u0661\u0662", "\uff11\uff12", "true",
            "False", "None", "null", "~", "cosine", "skip", "stop", "auto", "float32", "cpu",
            "cuda:0", "sigmoid", "simpo", "classic", "shared", "k3", "quick", "full", "pairs",
            "dpo", "dpo,ppo", "nope", "tensorboard", "wandb,nope", "r.py:score",
            "r.py:score:nan", "a:b:0.5", ":", "::", "\u65e5\u672c\u8a9e", "\U0001f600", "\x00",
            "a\nb", "\ud800", "caf\udce9", "~/x", "/nonexistent/dir/x", "a" * 300, "a" * 5000,
            "a/" * 300 + "b", "1" * 5000, "-1" + "0" * 400]
ARG_VALUES = st.one_of(
    st.sampled_from(ODD_TEXT), st.sampled_from(HUGE).map(str), st.integers().map(str),
    st.floats().map(repr), st.floats().map(str), st.text(max_size=12),
    st.sampled_from(["-", "--", "-x", "---", "--nope", "--learning", "--lr"]),
).filter(lambda v: v != "--help" and not v.startswith("-h"))  # -h prints help, exit 0

# YAML spelled out, as people (and editors) write it.
YAML_SCALARS = [
    "0", "1", "-1", "2", "8", "1.5", "0.5", "-0.5", "0.999", "1.0", "1e-5", "1e-3", "-1e-3",
    "1.0e-5", "1E5", "1e400", "-1e400", ".nan", ".NaN", ".inf", "-.inf", "+.inf", "0x1F",
    "0o17", "017", "0b101", "1_000", "1:30", "190:20:30.15", "true", "false", "yes", "No",
    "on", "off", "null", "~", "", "2020-01-01", "2020-13-45", "2020-02-30",
    "2001-12-14t21:59:43.10-05:00", "'1e-5'", '"nan"', "'0.1'", "'16'", "cosine", "skip",
    "error", "auto", "float32", "sigmoid", "classic", "shared", "k1", "quick", "standard",
    "pairs", '"\\ud800"', '"\\udce9"', '"a\\udfffb"', '"\\x00"', '"\\U0001F600"',
    "!!binary aGVsbG8=", "!!binary ###",
    "!!int abc", "!!int 0x", "!!float x", "!!float 1e400", "!!timestamp foo", "!!bool maybe",
    "!!str 12", "!!null x", "!!python/object:os.system {}", "!!python/name:os.system ''",
    "!!set {a, b}", "!!omap [{a: 1}]", "!!pairs [{a: 1}]", "!custom 1", "[1, 2]", "{a: 1}",
    "[]", "{}", "&a 3", "*nope", "'unterminated", '"bad \\q escape"', "@x", "`x", "%x",
    "{dpo: {beta: 0.1}}", "{nope: 1}", "{ppo: [1]}", "{dpo: .nan}", "{sft: {}, rm: null}",
    "|\n  a block\n  of text", ">-\n  folded\n  text", "[a, [b, [c, [d]]]]",
    "{a: {b: {c: {d: 1}}}}", "'" + "a" * 300 + "'", "a" * 5000,
]


def _laughs(levels: int, width: int = 10) -> str:
    """A flow list whose aliases expand to width**levels leaves (shared, not copied)."""
    parts = [f"&l0 [{', '.join(['lol'] * width)}]"]
    parts += [f"&l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return f"[{', '.join(parts)}]"


def _deep(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + closer * depth


YAML_VALUES = st.one_of(
    st.sampled_from(YAML_SCALARS), st.sampled_from(YAML_SCALARS),
    st.sampled_from(HUGE).map(str), st.just("1" * 4301), st.integers().map(str),
    st.floats().map(repr), st.floats().map(lambda x: f"{x:e}"),
    st.text(max_size=12).map(json.dumps), st.text(max_size=12).map(repr),
    # Nesting past Python's recursion limit: PyYAML takes about a second to give up on a
    # deep flow list (its scanner is quadratic in the depth), so those come as whole
    # documents now and then (yaml_documents), and as deep mappings here.
    st.sampled_from([10, 100, 300]).map(_deep),
    st.sampled_from([10, 300, 50_000]).map(lambda d: "{a: " * d + "1" + "}" * d),
    st.sampled_from([3, 9]).map(_laughs),
)
JUNK_KEYS = ["nope", "learning", "lr", "learn", "config", "Learning_Rate", "learning rate",
             "'1'", "1", "1.5", "null", "true", "''", '"\\ud800"', "[a, b]", "{a: 1}",
             "!!binary aGVsbG8=", "2020-01-01", "hyperparameters", "world", "reward",
             "<<", "? complex", "&k seed", "*k"]


def _field_key(name: str):
    return st.sampled_from([name, name, name.replace("_", "-"), f"'{name}'", f'"{name}"'])


@st.composite
def yaml_documents(draw, command: str) -> bytes:
    """A config file's bytes: mostly a mapping of settings, else anything a file can hold."""
    kind = draw(st.sampled_from(["mapping"] * 6 + ["scalar", "list", "invalid", "binary",
                                                    "multi"]))
    if kind == "scalar":
        text = draw(st.sampled_from(YAML_SCALARS))
    elif kind == "list":
        text = draw(st.sampled_from(["- a\n- b", "[seed, 1]", "- seed: 1", _deep(300),
                                     _deep(50_000), "root:x:0:0:SECRET-TOKEN-abcdef\n"]))
    elif kind == "invalid":
        text = draw(st.sampled_from([
            "a: [", "seed: 1\nseed 2\n  - x", "a: b: c", "\tseed: 1", "seed: 'x",
            "{seed: 1", "seed: 1\n batch_size: 2\nx", "%YAML 9.9\n---\nseed: 1", ": :",
            "seed: &a [*a]", "seed: 1\n...\nwhat", "\x00", "seed: \x07", "\ufeff\ufeffseed: 1",
            "- a\nb: 1"]))
    elif kind == "binary":
        return draw(st.one_of(st.binary(max_size=64), st.sampled_from([
            b"\xff\xfe\x00s\x00e\x00e\x00d", b"seed: 1\n\xe9\n", b"\xef\xbb\xbfseed: 1\n",
            b"seed: \xc3\x28\n", b"\x80" * 10])))
    elif kind == "multi":
        text = "seed: 1\n---\nbatch_size: 2\n"
    else:
        names = sorted(KINDS[command])
        lines = []
        for _ in range(draw(st.integers(0, 6))):
            if draw(st.integers(0, 5)) == 0:
                key = draw(st.one_of(st.sampled_from(JUNK_KEYS), st.text(max_size=8).map(
                    json.dumps)))
                value = draw(YAML_VALUES)
            else:
                name = draw(st.sampled_from(names))
                key = draw(_field_key(name))
                valid = draw(valid_value(command, name))
                value = draw(st.one_of(st.just(_yaml_literal(valid)), YAML_VALUES))
                if draw(st.booleans()):
                    value = _yaml_literal(valid)  # 3 in 4 valid, so that more files load
            lines.append(f"{key}: {value}")
        if draw(st.booleans()):  # what a command needs, so that more files load
            lines += [f"{k}: {v}" for k, v in required(command, draw).items()]
            lines = draw(st.permutations(lines))
        text = draw(st.sampled_from(["\n", "\r\n"])).join(lines)
    return text.encode("utf-8", "surrogatepass")


def _yaml_literal(value) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)  # 1e-05 included: PyYAML reads it as a string, the loader as a number
    return json.dumps(value)


def required(command: str, draw) -> dict[str, str]:
    """The settings a command cannot do without (paths are not checked here)."""
    if command == "compare":
        if draw(st.booleans()):
            return {"world": "w", "output_dir": "cmp"}
        return {"model": "m", "pairs": "p.jsonl", "prompts": "q.jsonl", "output_dir": "cmp"}
    needed = {"model": "m", "data": "d.jsonl", "output_dir": "run"}
    if command in ("ppo", "rloo", "grpo"):
        needed["reward"] = "r.py:score"
    return needed


@st.composite
def argv_lists(draw, command: str) -> list[str]:
    argv: list[str] = []
    if draw(st.integers(0, 3)):  # 3 in 4
        argv += [w for k, v in required(command, draw).items() for w in (f"--{flag(k)}", v)]
    names = sorted(n for n, k in KINDS[command].items() if k is not dict)
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.integers(0, 11)) == 0:  # a word that is no flag, or a flag without a value
            argv += draw(st.sampled_from([["--learning", "1e-3"], ["--lr", "1e-3"], ["--learn"],
                                          ["--learning-rate"], ["positional"], ["--"], ["-"],
                                          ["--config"], ["--config", "/nonexistent.yaml"],
                                          ["--config", "a" * 5000], ["--config", "."]]))
            continue
        name = draw(st.sampled_from(names))
        option = f"--{flag(name)}"
        if KINDS[command][name] is bool:
            argv.append(draw(st.sampled_from([option, f"--no-{flag(name)}"])))
            continue
        odd = draw(st.integers(0, 3)) == 0  # 1 in 4 odd, so that more command lines load
        value = draw(ARG_VALUES if odd else valid_value(command, name).map(str))
        argv += draw(st.sampled_from([[option, value], [f"{option}={value}"]]))
    return argv


# --- the property ---------------------------------------------------------------------------
def check_error(error: PreflabError) -> None:
    """One paragraph, printable; an error about a file quotes no more than an excerpt of it
    (a rule between settings may quote a value whole: ``unknown method '...'``)."""
    message = str(error)
    rest = message
    for part in (error.expected, error.path, error.field):
        if part:
            rest = rest.replace(str(part), "")  # what the user typed, or the flags' list
    assert "\n" not in rest and "Traceback" not in message, message
    rest.encode("utf-8")  # no lone surrogate of our making reaches the terminal
    if error.path is not None:
        assert len(rest) <= 400, message


def check_config(cfg, cls) -> None:
    """Every field holds a value of its declared type, choice and range."""
    assert type(cfg) is cls
    check_ranges(cfg)  # raises ConfigError if any number is out of range
    for f in fields(cfg):
        value, kind = getattr(cfg, f.name), _field_type(cls, f)
        if kind is float:
            assert type(value) is float and math.isfinite(value), (f.name, value)
        elif kind is int:
            assert type(value) is int, (f.name, value)
        else:
            assert isinstance(value, kind), (f.name, value)
        if kind is str:  # a name the OS can take: no lone surrogate but those it makes itself
            value.encode("utf-8", "surrogateescape")
        if f.metadata.get("choices"):
            assert value in f.metadata["choices"], (f.name, value)


def outcome(command: str, argv: list[str]) -> None:
    """parse_config on ``argv``: a valid config, a PreflabError or argparse's exit 2."""
    cls = CONFIGS[command]
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            cfg = parse_config(cls, argv, prog=f"preflab {command}")
    except PreflabError as error:
        check_error(error)
        OUTCOMES[command, "error"] += 1
    except SystemExit as exc:  # argparse's usage error
        assert exc.code == 2, (exc.code, err.getvalue(), out.getvalue())
        assert f"preflab {command}: error: " in err.getvalue(), err.getvalue()
        assert "Traceback" not in err.getvalue()
        OUTCOMES[command, "usage"] += 1
    else:
        check_config(cfg, cls)
        OUTCOMES[command, "config"] += 1


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-config")


@pytest.mark.parametrize("command", CONFIGS)
@fuzz()
@given(data=st.data())
def test_yaml_files(folder, command, data):
    raw = data.draw(yaml_documents(command), label="config file")
    extra = data.draw(st.one_of(st.just([]), st.just([]), st.just([]), argv_lists(command)),
                      label="flags")
    CASES[f"{command}-yaml"] += 1
    path = folder / f"{command}.yaml"
    path.write_bytes(raw)
    outcome(command, ["--config", str(path), *extra])


@pytest.mark.parametrize("command", CONFIGS)
@fuzz()
@given(data=st.data())
def test_command_lines(command, data):
    argv = data.draw(argv_lists(command), label="argv")
    CASES[f"{command}-argv"] += 1
    outcome(command, argv)


def test_every_config_fuzz_test_ran_its_cases():
    """At least 600 generated cases in all, and each command both loaded a config and refused
    one (runs last, as pytest keeps file order)."""
    if set(CASES) != set(EXPECTED_CASES):
        pytest.skip("only some config fuzz tests ran (-k or a test filter)")
    total = sum(CASES.values())
    print(f"\nconfig fuzz cases run: {total} ({dict(CASES)}); outcomes: {dict(OUTCOMES)}")
    assert total >= 600, dict(CASES)
    for command in CONFIGS:
        assert OUTCOMES[command, "config"] and OUTCOMES[command, "error"], dict(OUTCOMES)
