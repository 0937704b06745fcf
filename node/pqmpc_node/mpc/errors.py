"""The error raised when a malicious-security check fails."""

from __future__ import annotations

__all__ = ["MacCheckError"]


class MacCheckError(RuntimeError):
    """A MAC or consistency check failed: some party cheated or a message was corrupted; abort.

    ``check`` names the failed check, ``labels`` the round tags of the openings it covered.
    """

    def __init__(self, check: str, labels: list[str], detail: str) -> None:
        self.check = check
        self.labels = labels
        shown = ", ".join(labels[:8]) + (f", ... ({len(labels)} in all)" if len(labels) > 8 else "")
        super().__init__(f"MAC check {check!r} failed over openings [{shown}]: {detail}; the session must abort")
