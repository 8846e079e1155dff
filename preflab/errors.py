"""Typed exceptions for library callers; the CLI turns each into one paragraph and exit code 2.

Every error that a user's input can cause is a ``PreflabError``: it carries where the
problem is (file, line, field) and what was expected, so the message alone is enough to
fix the input. Anything else that escapes is a bug in preflab and keeps its traceback.
"""

from __future__ import annotations

EXIT_USAGE = 2


class PreflabError(Exception):
    """Base class: an error in what the user gave us (data, config, flags, model path)."""

    exit_code = EXIT_USAGE

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
        expected: str | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.field = field
        self.expected = expected
        super().__init__(self.render())

    def render(self) -> str:
        """One paragraph: ``path, line N, field 'f': message (expected ...).``"""
        where = []
        if self.path is not None:
            where.append(str(self.path))
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        text = self.message
        if self.expected:
            text = f"{text} (expected {self.expected})"
        return f"{', '.join(where)}: {text}" if where else text


class DataError(PreflabError):
    """A record, file or dataset that cannot be read or does not have the expected shape."""


class ConfigError(PreflabError):
    """A flag, config file or combination of settings that is invalid."""


class ModelLoadError(PreflabError):
    """A model or tokenizer that cannot be loaded as asked (missing, unsafe format, ...)."""


class ResumeError(PreflabError):
    """``--resume`` asked for, but the run directory holds nothing that can be resumed."""


class TrainingDiverged(PreflabError):
    """A loss, gradient or reward that is not finite: the run stops rather than train on it."""

    exit_code = 1


class NonFiniteReward(PreflabError):
    """A reward function returned NaN or an infinity."""


class NonFiniteProbabilities(PreflabError):
    """A model's next-token probabilities hold NaN or an infinity, so nothing can be sampled."""

    exit_code = 1
