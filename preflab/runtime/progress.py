"""Progress of a long loop: a tqdm bar on a terminal, plain lines in a log file.

tqdm redraws its bar with carriage returns, which is right on a terminal and fills a log
file (a scheduler's output, ``preflab compare``'s ``logs/``) with thousands of updates.
When stderr is not a terminal, ``progress_bar`` prints one plain line every 10% instead:

    dpo: 30% (90/300 steps) loss=0.61 rewards/accuracies=0.70 [41s elapsed, ~1m36s left]

Both offer ``update(n)``, ``set_postfix_str(text)`` and ``close()``.
"""

from __future__ import annotations

import sys
import time


def _fmt(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class PlainProgress:
    def __init__(self, *, total: int, initial: int = 0, desc: str = "", every: float = 0.1,
                 file=None, unit: str = "steps") -> None:
        self.total, self.n, self.desc, self.unit = max(total, 1), initial, desc, unit
        self.file = file or sys.stderr
        self.every = every
        self.postfix = ""
        self.start_n, self.started = initial, time.perf_counter()
        self.next_mark = (int(initial / self.total / every) + 1) * every

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n / self.total + 1e-9 >= self.next_mark or self.n >= self.total:
            self._print()
            while self.next_mark <= self.n / self.total + 1e-9:
                self.next_mark += self.every

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def _print(self) -> None:
        elapsed = time.perf_counter() - self.started
        done = self.n - self.start_n
        left = elapsed / done * (self.total - self.n) if done else 0.0
        postfix = f" {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {100 * self.n / self.total:.0f}% ({self.n}/{self.total} "
              f"{self.unit}){postfix} [{_fmt(elapsed)} elapsed, ~{_fmt(left)} left]",
              file=self.file, flush=True)

    def close(self) -> None:
        pass


class _Off:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(*, total: int, initial: int = 0, desc: str = "", enabled: bool = True,
                 unit: str = "steps"):
    if not enabled:
        return _Off()
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr,
                    dynamic_ncols=True)
    return PlainProgress(total=total, initial=initial, desc=desc, unit=unit)
