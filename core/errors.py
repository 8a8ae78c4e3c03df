"""The one exception type a user may meet: a message naming the file, and the fix."""

from __future__ import annotations


class QwythosError(Exception):
    """An error the user can act on. The CLI prints `message` and `hint`, never a traceback."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  fix: {self.hint}"
