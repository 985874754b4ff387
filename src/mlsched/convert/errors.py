"""The one exception of the converter: a reason to stop, one line, with its exit status."""

from __future__ import annotations

EXIT_BAD_INPUT = 2
EXIT_LOW_AGREEMENT = 3


class ConvertError(Exception):
    """A conversion that cannot go on; ``code`` is the process exit status."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.code = code


def first_line(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters) for one-line errors."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__
