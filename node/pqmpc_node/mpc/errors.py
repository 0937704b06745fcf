"""The errors raised when a malicious-security check fails.

:class:`MacCheckError` proves that *someone* cheated (or a message was corrupted);
:class:`BlamedCheckError` also names who, where the evidence is the culprit's own
authenticated message (a non-canonical element, a wrong length, a reveal that does not
open its commitment): the peer links are mutually authenticated, so that party sent it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["BlamedCheckError", "MacCheckError", "NonCanonicalError", "PeerAbortedError"]


class MacCheckError(RuntimeError):
    """A MAC or consistency check failed: some party cheated or a message was corrupted; abort.

    ``check`` names the failed check, ``labels`` the round tags of the openings it covered.
    """

    def __init__(self, check: str, labels: list[str], detail: str) -> None:
        self.check = check
        self.labels = labels
        shown = ", ".join(labels[:8]) + (f", ... ({len(labels)} in all)" if len(labels) > 8 else "")
        super().__init__(f"MAC check {check!r} failed over openings [{shown}]: {detail}; the session must abort")


class BlamedCheckError(MacCheckError):
    """A :class:`MacCheckError` whose culprits are known: ``blamed_parties`` (party indexes, ascending)."""

    def __init__(self, check: str, labels: list[str], detail: str, *, blamed_parties: Sequence[int]) -> None:
        super().__init__(check, labels, detail)
        self.blamed_parties: tuple[int, ...] = tuple(sorted(set(blamed_parties)))


class NonCanonicalError(BlamedCheckError):
    """A party sent a value that is not a canonical domain element (``>= p``) or has the wrong length.

    Why it matters: F_p elements travel as uint64 words; a share ``s + k*p`` is equal to
    ``s`` modulo p, so it passes every MAC check, while comparisons, truncations and
    signed decodings read the raw word. Every element that crosses a channel is checked.
    """


class PeerAbortedError(MacCheckError):
    """Party ``peer`` stopped the attempt because one of its checks caught a deviation.

    Honest parties that detect a cheat tell their peers (an abort notice) instead of just
    hanging up, so every honest party ends with the same kind of failure rather than
    seeing a lost party. The notice is one party's word: it names no culprit.
    """

    def __init__(self, peer: int, their_check: str) -> None:
        self.peer = peer
        self.their_check = their_check
        super().__init__("peer-abort", [], f"party {peer} stopped the session: its check {their_check!r} "
                                            "caught a deviation")
