"""A node process with a fault-injection hook; it exists only in the tests.

``PQMPC_TEST_FAULT=tamper``: add 1 to the first element of every payload this node sends
under an ``outputs`` round (a party changing its share of a result).
``PQMPC_TEST_FAULT=die-after:N``: exit abruptly (like a killed pod) on the N-th MPC send.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import numpy as np

from pqmpc_node.__main__ import main
from pqmpc_node.net import pq_channel

_original = pq_channel.PqChannel.send_many
_sends = 0


async def _faulty_send_many(self: pq_channel.PqChannel, tag: str, payloads: Mapping[int, bytes]) -> None:
    global _sends
    fault = os.environ.get("PQMPC_TEST_FAULT", "")
    _sends += 1
    if fault.startswith("die-after:") and _sends >= int(fault.split(":", 1)[1]):
        os._exit(17)
    if fault == "tamper" and "outputs" in tag:
        changed = {}
        for peer, data in payloads.items():
            arr = np.frombuffer(data, dtype=np.uint64).copy()
            if arr.size:
                arr[0] += np.uint64(1)
            changed[peer] = arr.tobytes()
        payloads = changed
    await _original(self, tag, payloads)


pq_channel.PqChannel.send_many = _faulty_send_many  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
