"""The signed name of an owner's input: ``input/<owner>/<tag>/v<version>[/part-<i>-of-<k>]``.

The input id rides in the envelope header, which the owner signs with its ML-DSA key
(:mod:`pqmpc_node.crypto.envelopes`), so everything in it is the owner's word and no
node or proxy can change it:

* ``tag``: a keyed digest of the whole input's content (the client's
  ``_InputDerivation``): equal tags are the same content submitted again;
* ``version``: which submission of this owner it is. A replacement carries a higher
  version than the one it replaces; an older or equal version with other content is
  refused (:mod:`pqmpc_node.input_versions`);
* ``part i of k``: a table too large for one envelope travels as ``k`` envelopes, the
  rows of part 1, then part 2, … (:mod:`pqmpc_node.input_parts`); a single envelope has
  no part suffix (part 1 of 1).

Older clients sent ``input/<owner>/<tag>`` (read as version 1, one part) or an untagged
``input/<owner>`` (version 1, no tag: never "the same content" as anything).

Pure: parsing and formatting only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["InputId", "InputIdError", "MAX_PARTS", "MAX_VERSION"]

MAX_VERSION = 2**31 - 1
MAX_PARTS = 4096
_TAG = re.compile(r"[0-9a-f]{8,64}")
_VERSION = re.compile(r"v([1-9][0-9]{0,9})")
_PART = re.compile(r"part-([1-9][0-9]{0,3})-of-([1-9][0-9]{0,3})")


class InputIdError(ValueError):
    """An input id that does not follow the format, or names another owner."""


@dataclass(frozen=True)
class InputId:
    """One envelope's place in its owner's input: content tag, version, and part ``part`` of ``parts`` (1-based)."""

    owner: str
    tag: str = ""
    version: int = 1
    part: int = 1
    parts: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.version <= MAX_VERSION:
            raise InputIdError(f"input version must be 1..{MAX_VERSION}, got {self.version}")
        if not 1 <= self.part <= self.parts <= MAX_PARTS:
            raise InputIdError(f"input part must be 1..parts (parts at most {MAX_PARTS}), got part {self.part} "
                               f"of {self.parts}")

    def text(self) -> str:
        """The id as the envelope header carries it."""
        if not self.tag:
            return f"input/{self.owner}"
        base = f"input/{self.owner}/{self.tag}/v{self.version}"
        return base if self.parts == 1 else f"{base}/part-{self.part}-of-{self.parts}"

    def whole(self) -> InputId:
        """The id of the whole input (no part): what the parties agree on and the status reports."""
        return InputId(self.owner, self.tag, self.version)

    def same_content(self, other: InputId | None) -> bool:
        """Whether both name the same content of the same owner (equal tags; an untagged id never matches)."""
        return other is not None and bool(self.tag) and self.owner == other.owner and self.tag == other.tag

    @classmethod
    def parse(cls, text: str, owner: str) -> InputId:
        """The id ``text`` of an envelope from ``owner`` (its signed sender); :class:`InputIdError` if malformed."""
        prefix = f"input/{owner}"
        if text == prefix:
            return cls(owner)
        if not text.startswith(prefix + "/"):
            raise InputIdError(f"input id {text!r} does not start with {prefix + '/'!r}")
        rest = text[len(prefix) + 1:].split("/")
        if not _TAG.fullmatch(rest[0]):
            raise InputIdError(f"input id {text!r}: the content tag must be 8-64 lower-case hex digits")
        if len(rest) == 1:
            return cls(owner, rest[0])
        version = _VERSION.fullmatch(rest[1])
        if version is None or len(rest) > 3:
            raise InputIdError(f"input id {text!r} must be input/<owner>/<tag>/v<N>[/part-<i>-of-<k>]")
        if len(rest) == 2:
            return cls(owner, rest[0], int(version.group(1)))
        part = _PART.fullmatch(rest[2])
        if part is None:
            raise InputIdError(f"input id {text!r}: the part must read part-<i>-of-<k>")
        return cls(owner, rest[0], int(version.group(1)), int(part.group(1)), int(part.group(2)))
