"""``preflab <command>``: one command per job. Thin: parse, validate, call.

Each command lives in its own module and exposes ``main(argv) -> int``; modules are
imported only when their command runs, so ``preflab --help`` is instant. Errors in what
the user gave (a ``PreflabError``) print one paragraph and exit 2, never a traceback. Output
piped into a reader that stops early (``preflab --help | head``) ends quietly with exit 141
(``EXIT_STDOUT_CLOSED``); ``run_module`` gives a module's own ``python -m`` entry the same.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading

from preflab import algorithms
from preflab.runtime.exits import (  # noqa: F401 (EXIT_STDOUT_CLOSED, run_module: the face)
    EXIT_STDOUT_CLOSED,
    _guarded,
    quiet_libraries,
    run_module,
)

TOOLS: dict[str, tuple[str, str]] = {
    "bon": ("preflab.commands.bon", "best-of-n: sample n, keep the reward model's favourite; gold "
            "and proxy reward against n and the KL bound"),
    "sample": ("preflab.commands.sample", "K completions per prompt from a policy, for a judge to "
               "label"),
    "label": ("preflab.commands.label", "AI feedback: pairs or KTO labels from samples and a "
              "judge (LM, chat endpoint, reward, world); a human-labelling round trip"),
    "world": ("preflab.commands.world", "the built-in task: build it, label pairs (again), score "
              "a policy"),
    "compare": ("preflab.commands.compare", "RLHF and DPO from the same SFT model, the "
                "DPO-vs-RLHF comparison table measured, with a report"),
    "report": ("preflab.commands.report", "render a comparison's report again from its "
               "results.json"),
    "plan": ("preflab.commands.plan", "GPU memory per method and role, from the config.json or "
             "GGUF metadata of a Llama, Mistral, Qwen2, GPT-2 or GPT-NeoX model"),
    "reviews": ("preflab.commands.reviews", "a real model's task: review prompts, VADER sentiment "
                "as the gold reward, pairs from the model's own samples (the DPO paper's "
                "experiment)"),
    "demo": ("preflab.commands.demo", "RLHF and DPO on the built-in task, measured and reported, "
             "offline, in minutes"),
    "export": ("preflab.commands.export", "write a model directory as one GGUF file (f32, f16 or "
               "q8_0) for llama.cpp, Ollama and LM Studio"),
}
"""The commands that are not training methods; the methods come from ``preflab.algorithms``."""
COMMANDS: dict[str, tuple[str, str]] = {**algorithms.commands(), **TOOLS}
"""Every command: (the module whose ``main(argv)`` runs it, its line in the usage)."""

USAGE = """usage: preflab <command> [flags]    (preflab <command> --help for its flags)

Align language models with human preferences, by RLHF and DPO, and measure the two.

commands:
{commands}
"""


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {doc}" for name, (_, doc) in COMMANDS.items()]
    return USAGE.format(commands="\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    code = _guarded(lambda: _run(argv))
    # A torchrun or accelerate rank leaves without the interpreter's shutdown, where torch's
    # gloo threads can abort it after the run is done (``distributed.exit_rank``). The module
    # is only looked up: a command that never loaded it never joined a process group.
    dist_module = sys.modules.get("preflab.runtime.distributed")
    if dist_module is not None and dist_module.joined():
        dist_module.exit_rank(code)
    return code


def _run(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from preflab import __version__

        print(f"preflab {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"preflab: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    quiet_libraries()
    from preflab.errors import PreflabError

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(rest) or 0)
    except PreflabError as exc:
        stopped = getattr(exc, "signum", None) is not None  # signals.Interrupted: not an error
        print(f"preflab {name}: {'' if stopped else 'error: '}{exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, Terminated) as exc:
        signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        print(f"preflab {name}: stopped by {signum.name}", file=sys.stderr)
        return 128 + signum
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


class Terminated(BaseException):
    """SIGTERM outside a training loop (which stops at a step boundary instead): like Ctrl-C."""


def _terminated(signum, frame) -> None:  # noqa: ARG001 (signal handler signature)
    raise Terminated


if __name__ == "__main__":
    sys.exit(main())
