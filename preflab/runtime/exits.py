"""How a preflab process ends: exit 141 when the reader of stdout has gone, quiet libraries.

``run_module(main)`` is every module's ``python -m`` entry; ``preflab.cli`` uses the same
guard, so a pipe closed early (``preflab --help | head``) ends the same way everywhere.
"""

from __future__ import annotations

import os
import select
import sys


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
