"""Review: a node that shuts down while it keeps a failed session's inputs for a re-run leaves the sealed
envelopes on disk (and the shares' fences unreleased): :meth:`SessionManager.close` only cancels running
tasks, and the keeping timer dies with the event loop. Every other end of a session deletes them
(docs: "dropped at the session's deadline, on a cancel, or when a re-run ends")."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "node"))

from test_kept_inputs import _manager, _runtime  # noqa: E402


def test_close_drops_kept_inputs(tmp_path: Path) -> None:
    async def main() -> tuple[bool, list[str]]:
        now = [1000.0]
        mgr, keys = _manager(tmp_path, now)
        rt, envelope = _runtime(mgr, deadline=5000.0)
        mgr.sessions["s1"] = rt
        rt.inputs_kept = True
        mgr._end(rt)
        await mgr.close()
        return envelope.exists(), keys.ring.released

    exists, released = asyncio.run(main())
    assert not exists, "the kept envelopes outlive the node's shutdown (no deadline timer will ever delete them)"
