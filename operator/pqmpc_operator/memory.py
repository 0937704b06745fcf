"""What the operator keeps in memory between passes, rebuilt from the API when it starts.

Two maps live only in the operator process:

- ``busy`` — ``(namespace, pool) -> {"<namespace>/<session>": nodes}``: the nodes each
  running MPCSession uses. The pool controller reads it so a roll-out and a non-urgent
  certificate renewal wait for those nodes (placement load-spreading does not need it:
  it counts the other sessions' placements from the API on every placement).
- ``watches`` — ``(namespace, pool) ->`` :class:`~pqmpc_operator.quarantine.PoolWatch`:
  the anomaly scoring state and the queue of finished sessions' evidence.

Everything ``busy`` holds is in the API: an MPCSession in an active phase
(``Placing`` .. ``Computing``) with a ``status.placement`` uses the nodes placed there.
:func:`busy_from_sessions` rebuilds the map exactly as the session controller keeps it
(:func:`busy_nodes` is the one rule both use).

``watches`` can be rebuilt only in part: quarantines come back from the pool status
(``quarantinedSince``, see :mod:`pqmpc_operator.quarantine`); the session evidence comes
back from the ``status.evidence`` a failed session keeps (:func:`evidence_from_sessions`)
while the session exists (until ``ttlSecondsAfterFinished``). What cannot come back:
the scores and signal levels built from scraping the nodes' ``/metrics`` before the
restart (the first scrape after it is a new baseline), and the evidence of sessions
already deleted by their TTL.

:func:`restore_memory` is the thin shell run once at start-up, before any pool or
session loop runs (so nothing races it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from pqmpc_operator.anomaly import SessionEvidence
from pqmpc_operator.kube import ClusterApi
from pqmpc_operator.quarantine import PoolWatch
from pqmpc_operator.session_decide import ACTIVE, evidence_from_status

__all__ = ["BusyMap", "busy_from_sessions", "busy_nodes", "evidence_from_sessions", "restore_memory"]

_log = logging.getLogger(__name__)

BusyMap = dict[tuple[str, str], dict[str, frozenset[str]]]


def busy_nodes(status: Mapping[str, Any]) -> frozenset[str] | None:
    """The nodes a session with this status keeps busy; None when it keeps none (not active or not placed)."""
    if status.get("phase") not in ACTIVE or not status.get("placement"):
        return None
    return frozenset(str(p["node"]) for p in status.get("placement") or [])


def busy_from_sessions(bodies: Iterable[Mapping[str, Any]]) -> BusyMap:
    """The ``busy`` map the session controller would hold for these MPCSessions (as stored)."""
    busy: BusyMap = {}
    for body in bodies:
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue  # its loop is over: the controller drops it from the map
        nodes = busy_nodes(body.get("status") or {})
        if nodes is None:
            continue
        pool = str((body.get("spec") or {}).get("poolRef", ""))
        busy.setdefault((str(meta["namespace"]), pool), {})[f"{meta['namespace']}/{meta['name']}"] = nodes
    return busy


def evidence_from_sessions(bodies: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], list[SessionEvidence]]:
    """Each pool's anomaly evidence as recorded in its finished sessions' ``status.evidence``."""
    out: dict[tuple[str, str], list[SessionEvidence]] = {}
    for body in bodies:
        evidence = evidence_from_status(body.get("status") or {})
        if evidence is None:
            continue
        key = (str(body["metadata"]["namespace"]), str((body.get("spec") or {}).get("poolRef", "")))
        out.setdefault(key, []).append(evidence)
    return out


async def restore_memory(api: ClusterApi, *, namespaces: Iterable[str], busy: BusyMap,
                         watches: dict[tuple[str, str], PoolWatch]) -> int:
    """Rebuild ``busy`` and the watches' evidence from the MPCSessions stored; returns how many were read.

    ``namespaces``: the namespaces the operator serves (empty: all). Entries already in the
    maps are kept (a pass that ran since knows better).
    """
    wanted = list(namespaces)
    bodies: list[dict[str, Any]] = []
    if wanted:
        for ns in wanted:
            bodies.extend(await api.list_sessions(ns))
    else:
        bodies = await api.list_all_sessions()
    for key, sessions in busy_from_sessions(bodies).items():
        held = busy.setdefault(key, {})
        for session, nodes in sessions.items():
            held.setdefault(session, nodes)
    for key, evidence in evidence_from_sessions(bodies).items():
        watches.setdefault(key, PoolWatch()).evidence.extend(evidence)
    _log.info("rebuilt from %d MPCSession(s): %d running on %d pool(s), evidence of %d finished one(s)",
              len(bodies), sum(len(s) for s in busy.values()), len(busy),
              sum(len(w.evidence) for w in watches.values()))
    return len(bodies)
