"""Stopping a run without losing it: SIGTERM and SIGINT end a run at the next step boundary.

A scheduler pre-empting a job sends SIGTERM; a user at a terminal presses Ctrl-C (SIGINT).
Inside ``graceful_stop()`` (every command's ``main`` runs its work in it) the first such
signal only sets a flag. The training loop looks at the flag once per step
(``requested_signal``); when it is set, the trainer writes a checkpoint at that step and
raises ``Interrupted``, whose exit code is 128 + the signal (143 for SIGTERM, 130 for SIGINT)
and whose message says how to resume. Before the first step boundary (``arm``: loading, the
first evaluation) there is nothing to save, so a signal raises ``Interrupted`` at once. After
the last step the run finishes writing ``final/``. A second signal ends the process at once,
the way the signal would have without preflab.

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
    def __init__(self, armed: bool) -> None:
        self.signum: int | None = None
        self.armed = armed  # a loop looks at the flag: wait for it; else stop at once

    def handle(self, signum, frame) -> None:  # noqa: ARG002 (signal handler signature)
        if self.signum is not None:  # the second signal: do what it would have done
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        name = signal.Signals(signum).name
        if not self.armed:  # loading, or the evaluation before the first step: nothing to save
            raise Interrupted(f"stopped by {name} before the first step; there was nothing to "
                              "checkpoint yet", signum=signum)
        print(f"\npreflab: {name} received: finishing this step and writing a checkpoint "
              f"(send {name} again to stop at once)", file=sys.stderr, flush=True)


_FLAG: _Flag | None = None


@contextlib.contextmanager
def graceful_stop(*, armed: bool = True):
    """Catch SIGTERM and SIGINT while the block runs (in the main thread only).

    ``armed``: the block looks at the flag often (a harness, a step loop already running).
    A trainer enters unarmed: until its first step boundary (``arm``) a signal stops it at once,
    rather than waiting out the loading and the first evaluation."""
    global _FLAG
    if threading.current_thread() is not threading.main_thread() or _FLAG is not None:
        yield
        return
    flag = _Flag(armed)
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


def arm() -> None:
    """From now on a signal waits for the next step boundary (called at each one)."""
    if _FLAG is not None:
        _FLAG.armed = True


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
