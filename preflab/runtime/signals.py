"""Stopping a run without losing it: SIGTERM and SIGINT end a run at the next step boundary.

A scheduler pre-empting a job sends SIGTERM; a user at a terminal presses Ctrl-C (SIGINT).
Inside ``graceful_stop()`` (every command's ``main`` runs its work in it) the first such
signal only sets a flag. The training loop looks at the flag once per step
(``stop_requested``); when it is set, the trainer writes a checkpoint at that step and raises
``Interrupted``, whose exit code is 128 + the signal (143 for SIGTERM, 130 for SIGINT) and
whose message says how to resume. A second signal ends the process at once, the way the
signal would have without preflab.

Under ``torchrun`` every process gets the signal, not necessarily at the same step, so the
flag is reduced across processes (a max) before anyone acts on it: all processes stop at
the same step and write one checkpoint together.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

import torch

from preflab.errors import PreflabError

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(PreflabError):
    """The run was asked to stop and stopped cleanly; ``exit_code`` is 128 + the signal."""

    def __init__(self, message: str, *, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
        self.signum = signum


class _Flag:
    def __init__(self) -> None:
        self.signum: int | None = None

    def handle(self, signum, frame) -> None:  # noqa: ARG002 (signal handler signature)
        if self.signum is not None:  # the second signal: do what it would have done
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        name = signal.Signals(signum).name
        print(f"\npreflab: {name} received: finishing this step and writing a checkpoint "
              f"(send {name} again to stop at once)", file=sys.stderr, flush=True)


_FLAG: _Flag | None = None


@contextlib.contextmanager
def graceful_stop():
    """Catch SIGTERM and SIGINT while the block runs (in the main thread only)."""
    global _FLAG
    if threading.current_thread() is not threading.main_thread() or _FLAG is not None:
        yield
        return
    flag = _Flag()
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, flag.handle)
    _FLAG = flag
    try:
        yield
    finally:
        _FLAG = None
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def requested_signal(ctx=None) -> int | None:
    """The signal that asked this run to stop (agreed by every process), or None."""
    local = _FLAG.signum if _FLAG is not None else None
    if ctx is None or not ctx.enabled:
        return local
    from preflab.runtime import distributed

    mine = torch.tensor([float(local or 0)])
    agreed = distributed.all_reduce_max(mine, ctx)
    return int(agreed.item()) or None


def interrupted(signum: int, step: int, checkpoint: str) -> Interrupted:
    name = signal.Signals(signum).name
    return Interrupted(f"stopped by {name} after step {step}; checkpoint written to "
                       f"{checkpoint}. To continue, run the same command with --resume.",
                       signum=signum)
