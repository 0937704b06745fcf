"""What a node does with an owner's input envelope, given what it holds of that owner: the pure decision.

An owner's input at one node is at most one *held* (complete) version and at most one
*pending* version whose parts are still arriving. An incoming envelope (its signed
:class:`~pqmpc_node.input_ids.InputId`) is, in this order:

1. the held content again (same tag, any version: a re-run of the same ``pqmpc submit``)
   → ``already`` (idempotent, even after the session ran);
2. a part of the pending version that is already here → ``already``;
3. anything else once inputs are closed (the session computes or has ended)
   → refused ``inputs_closed``;
4. an older version than the held one → ``stale_input``; the held version with other
   content → ``duplicate_input`` (the owner must submit a *higher* version:
   ``pqmpc submit --replace``);
5. against a pending version: older → ``stale_input``; the same version with other
   content or another part count → ``inconsistent_parts``; newer → accepted, and the
   pending parts of the older one are dropped;
6. otherwise accepted: a single-part envelope becomes the held version at once
   (replacing the old one), a part joins the pending version.

Pure: the node's shell (:mod:`pqmpc_node.sessions`) acts on the :class:`Decision`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pqmpc_node.input_ids import InputId

__all__ = ["Decision", "Pending", "REPLACE_HINT", "decide"]

REPLACE_HINT = "to replace it, run the same `pqmpc submit` with --replace (a signed, higher version)"


@dataclass(frozen=True)
class Pending:
    """A version whose parts are arriving: its whole id, and the part numbers here so far."""

    id: InputId
    have: frozenset[int] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Decision:
    """``accept``, ``already`` (idempotent: nothing changes) or ``refuse`` with an HTTP status and reason."""

    action: Literal["accept", "already", "refuse"]
    message: str = ""
    reason: str = ""
    status: int = 202


def _refuse(reason: str, message: str, status: int = 409) -> Decision:
    return Decision("refuse", message, reason, status)


def decide(incoming: InputId, *, held: InputId | None, pending: Pending | None, open_for_inputs: bool,
           closed_because: str = "") -> Decision:
    """The decision for one envelope (see the module docstring for the order of the rules)."""
    owner = incoming.owner
    if held is not None and incoming.same_content(held):
        return Decision("already", f"{owner!r} already delivered this very input (same content, version "
                                   f"{held.version})")
    if (pending is not None and incoming.same_content(pending.id) and incoming.version == pending.id.version
            and incoming.parts == pending.id.parts and incoming.part in pending.have):
        return Decision("already", f"part {incoming.part} of {incoming.parts} of {owner!r}'s version "
                                   f"{incoming.version} is already here")
    if not open_for_inputs:
        return _refuse("inputs_closed", f"{closed_because}; inputs are closed: an input or replacement must arrive "
                                        "while the session awaits inputs")
    if held is not None and incoming.version < held.version:
        return _refuse("stale_input", f"{owner!r}'s version {incoming.version} is older than version {held.version} "
                                      "held here; a replacement needs a higher version")
    if held is not None and incoming.version == held.version:
        return _refuse("duplicate_input", f"{owner!r} already delivered a different input (version {held.version}) "
                                          f"to this session; {REPLACE_HINT}")
    if pending is not None:
        if incoming.version < pending.id.version:
            return _refuse("stale_input", f"{owner!r}'s version {incoming.version} is older than version "
                                          f"{pending.id.version} arriving in parts here")
        if incoming.version == pending.id.version and (not incoming.same_content(pending.id)
                                                       or incoming.parts != pending.id.parts):
            return _refuse("inconsistent_parts", f"part {incoming.part} of {incoming.parts} of {owner!r}'s version "
                                                 f"{incoming.version} does not belong to the {pending.id.parts} "
                                                 "parts of that version already here (other content or another "
                                                 "part count)")
    return Decision("accept")
