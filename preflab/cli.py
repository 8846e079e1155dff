"""``preflab <command>``: one command per job. Thin: parse, validate, call.

Each command lives in its own module and exposes ``main(argv) -> int``; modules are
imported only when their command runs, so ``preflab --help`` is instant. Errors in what
the user gave (a ``PreflabError``) print one paragraph and exit 2, never a traceback. Output
piped into a reader that stops early (``preflab --help | head``) ends quietly with exit 141
(``EXIT_STDOUT_CLOSED``); ``run_module`` gives a module's own ``python -m`` entry the same.
"""

from __future__ import annotations

import importlib
import os
import select
import signal
import sys
import threading

COMMANDS: dict[str, tuple[str, str]] = {
    "sft": ("preflab.algorithms.sft", "supervised fine-tuning on completions"),
    "dpo": ("preflab.algorithms.dpo", "direct preference optimisation: DPO, cDPO, IPO, hinge, robust, SimPO, ORPO"),
    "rm": ("preflab.algorithms.rm", "reward model: a Bradley-Terry scalar head on preference pairs"),
    "kto": ("preflab.algorithms.kto", "KTO: good/bad labels instead of pairs, or pairs split "
            "into both"),
    "online-dpo": ("preflab.algorithms.online_dpo", "online DPO: rounds of sampling from the "
                   "policy, judging, pairing best against worst, and DPO steps"),
    "bon": ("preflab.bon", "best-of-n: sample n, keep the reward model's favourite; gold and "
            "proxy reward against n and the KL bound"),
    "ppo": ("preflab.algorithms.ppo", "PPO on prompts: policy, value, reward and reference roles"),
    "rloo": ("preflab.algorithms.rloo", "RLOO on prompts: K completions each, the leave-one-out "
             "baseline, no value model"),
    "grpo": ("preflab.algorithms.grpo", "GRPO on prompts: K completions each, group-normalised "
             "advantages, no value model"),
    "sample": ("preflab.sample", "K completions per prompt from a policy, for a judge to label"),
    "label": ("preflab.label", "AI feedback: pairs or KTO labels from samples and a judge "
              "(LM, chat endpoint, reward, world); a human-labelling round trip"),
    "world": ("preflab.world.cli", "the built-in task: build it, label pairs (again), score a policy"),
    "compare": ("preflab.compare.cli", "RLHF and DPO from the same SFT model, the DPO-vs-RLHF "
                "comparison table measured, with a report"),
    "report": ("preflab.compare.report", "render a comparison's report again from its "
               "results.json"),
    "plan": ("preflab.compare.plan", "GPU memory per method and role, from the config.json or "
             "GGUF metadata of a Llama, Mistral, Qwen2, GPT-2 or GPT-NeoX model"),
    "reviews": ("preflab.reviews", "a real model's task: review prompts, VADER sentiment as the gold "
                "reward, pairs from the model's own samples (the DPO paper's experiment)"),
    "demo": ("preflab.demo", "RLHF and DPO on the built-in task, measured and reported, offline, in minutes"),
    "export": ("preflab.export", "write a model directory as one GGUF file (f32, f16 or q8_0) "
               "for llama.cpp, Ollama and LM Studio"),
}

USAGE = """usage: preflab <command> [flags]    (preflab <command> --help for its flags)

Align language models with human preferences, by RLHF and DPO, and measure the two.

commands:
{commands}
"""


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {doc}" for name, (_, doc) in COMMANDS.items()]
    return USAGE.format(commands="\n".join(lines))


def quiet_libraries() -> None:
    # Library chatter (load bars, advisory warnings) would bury preflab's own output.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


EXIT_STDOUT_CLOSED = 141
"""The exit code when the reader of stdout has gone (``preflab ... | head``): 128 + SIGPIPE,
what the shell reports for ``cat``, ``grep`` or ``yes`` in the same place, so a script under
``set -o pipefail`` sees preflab as it sees them. Not 0: a training command whose output pipe
closes stops at its next print, unfinished (no ``final/``)."""


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (``poll`` reports an error on it), so
    that a BrokenPipeError from another pipe or socket is not mistaken for it."""
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
    except (AttributeError, OSError, ValueError):  # no real stdout, or no poll (Windows)
        return False
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _end_quietly(exc: BrokenPipeError) -> int:
    """After a BrokenPipeError on stdout: point stdout at /dev/null, so that the
    interpreter's last flush at exit writes nowhere instead of raising again (an "Exception
    ignored" message and exit 120), and return ``EXIT_STDOUT_CLOSED``. Any other broken pipe
    is raised again."""
    if not _stdout_closed():
        raise exc
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_STDOUT_CLOSED


def _guarded(call) -> int:
    """``call()``, its exit code, with stdout flushed before returning: buffered output meets
    a closed pipe here, where it is caught, and not in the interpreter's last flush. So does
    argparse's ``--help`` (a SystemExit after printing)."""
    try:
        try:
            code = int(call() or 0)
        except SystemExit:
            sys.stdout.flush()
            raise
        sys.stdout.flush()
        return code
    except BrokenPipeError as exc:
        return _end_quietly(exc)


def run_module(module_main) -> int:
    """A module's ``if __name__ == "__main__"`` entry: ``sys.exit(run_module(main))`` runs
    ``main()`` with a closed stdout handled as ``preflab`` handles it."""
    return _guarded(module_main)


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
