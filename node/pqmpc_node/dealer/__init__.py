"""The optional trusted dealer: who deals (the operator) and what a node needs to consume dealt material.

Trust assumption: the dealer — the operator — is trusted not to collude with any node
and to deal correct material; it knows every preprocessed value (triples, masks, the
MAC key) but never sees inputs or outputs. A node learns only its own material: its
seed ``s_i`` and its correction stream (:mod:`pqmpc_node.dealer.seeded` explains the
split), never another party's seed, so it cannot unmask any Beaver opening. Sessions
with an honest majority do not use it: their parties make their own material
(:mod:`pqmpc_node.mpc.honest_majority`).

* :mod:`~pqmpc_node.dealer.simulation` — :func:`deal`: the operator's side;
* :mod:`~pqmpc_node.dealer.size` — the body size projected before dealing, and the nodes' limit;
* :mod:`~pqmpc_node.dealer.wire` — the sealed, signed body and :func:`open_preprocessing`;
* :mod:`~pqmpc_node.dealer.provider` — a node's provider over its material, per attempt;
* :mod:`~pqmpc_node.dealer.seeded` — the split of one dealer into per-party seeds and streams.
"""

from pqmpc_node.dealer.provider import attempt_count, party_provider
from pqmpc_node.dealer.seeded import PreprocessingMismatchError
from pqmpc_node.dealer.simulation import DealerOutput, deal, deal_async
from pqmpc_node.dealer.wire import (
    MAGIC,
    PREPROCESSING_INPUT_ID,
    PartyMaterial,
    PreprocessingError,
    open_preprocessing,
    seal_preprocessing,
)

__all__ = [
    "MAGIC", "PREPROCESSING_INPUT_ID", "DealerOutput", "PartyMaterial", "PreprocessingError",
    "PreprocessingMismatchError", "attempt_count", "deal", "deal_async", "open_preprocessing", "party_provider",
    "seal_preprocessing",
]
