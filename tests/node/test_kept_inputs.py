"""How long a failed session's kept inputs live at a node (:class:`pqmpc_node.sessions.SessionManager`): kept
(shares, sealed envelopes, key fences) when the session ends on too few parties to multiply, and dropped — fences
released, envelopes deleted — once the session's deadline passes; an ordinary end drops them at once. No node
process: the manager's end-of-session step with a stub key ring and a clock the test sets."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

from pqmpc_node.payloads import InputPayload
from pqmpc_node.sessions import Phase, SessionManager, SessionRuntime


class _Ring:
    def __init__(self) -> None:
        self.released: list[str] = []

    def release(self, fence: str) -> None:
        self.released.append(fence)


class _Keys:
    def __init__(self) -> None:
        self.ring = _Ring()

    def current_epoch(self) -> int:
        return 1


def _manager(tmp_path: Path, now: list[float]) -> tuple[SessionManager, _Keys]:
    keys = _Keys()
    mgr = SessionManager(node_id="n0", pool="banks", keys=keys, signer_key=None, metrics=None,  # type: ignore[arg-type]
                         counters=None, state_dir=tmp_path,  # type: ignore[arg-type]
                         clock=lambda: dt.datetime.fromtimestamp(now[0], dt.timezone.utc))
    return mgr, keys


def _runtime(mgr: SessionManager, deadline: float) -> tuple[SessionRuntime, Path]:
    party: Any = type("Party", (), {"kem_epoch": 1})()
    plan: Any = type("Plan", (), {
        "session_id": "s1", "generation": 1, "digest": lambda self: "d", "parties": [party, party, party],
        "sharing": "shamir", "security": "malicious", "inputs": [], "deadline": deadline, "preprocessing": "prss",
        "inputs_held_by": ()})()
    rt = SessionRuntime(plan=plan, body=b"", party=0, started=0.0, compiled=None)  # type: ignore[arg-type]
    rt.inputs = {"bank-a": InputPayload("rows", "f61", {}, {}, 3)}
    rt.phase, rt.reason = Phase.FAILED, "peer_lost"
    envelope = mgr._owner_dir("s1", "bank-a") / "v1" / "part-1-of-1.sealed"
    envelope.parent.mkdir(parents=True)
    envelope.write_bytes(b"sealed")
    return rt, envelope


async def _until(check: Any) -> None:
    """Let the event loop run the timers that are due (no wall-clock wait: a due timer runs within a few turns)."""
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("the kept inputs were not dropped")


async def test_kept_inputs_stay_until_the_deadline(tmp_path: Path) -> None:
    now = [1000.0]
    mgr, keys = _manager(tmp_path, now)
    rt, envelope = _runtime(mgr, deadline=1000.0)  # the deadline is now: the drop is due at once
    rt.inputs_kept = True
    mgr._end(rt)
    # Kept at the end: shares, envelope and fences (nothing released yet), and the status says so.
    assert rt.inputs and envelope.exists() and keys.ring.released == []
    assert rt.status()["inputsKept"] is True and rt.status()["inputsKeptOwners"] == 1
    await _until(lambda: not rt.inputs_kept)
    assert not rt.inputs and not envelope.exists() and "s1@1" in keys.ring.released
    assert rt.status()["inputsKept"] is False and rt.kept_timer is None


async def test_an_ordinary_end_drops_the_inputs_at_once(tmp_path: Path) -> None:
    now = [1000.0]
    mgr, keys = _manager(tmp_path, now)
    rt, envelope = _runtime(mgr, deadline=5000.0)
    mgr._end(rt)
    assert not rt.inputs and not envelope.exists() and "s1@1" in keys.ring.released and rt.kept_timer is None


async def test_a_far_deadline_keeps_them_and_a_hand_over_stops_the_timer(tmp_path: Path) -> None:
    now = [1000.0]
    mgr, keys = _manager(tmp_path, now)
    rt, envelope = _runtime(mgr, deadline=5000.0)
    rt.inputs_kept = True
    mgr._end(rt)
    assert rt.kept_timer is not None and rt.kept_timer.when() > asyncio.get_running_loop().time() + 3000
    mgr._hand_over_kept(rt)  # a re-run plan took them: this runtime neither keeps nor deletes them any more
    assert rt.kept_timer is None and not rt.inputs_kept and envelope.exists() and keys.ring.released == []
