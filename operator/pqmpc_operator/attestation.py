"""Who is asking for a certificate: the operator's checks of a node's bootstrap attestation.

Contract: pure. The shell (:mod:`pqmpc_operator.bootstrap_server`) sends the node's token
to the API server (TokenReview, audience :data:`~pqmpc_node.crypto.pki.BOOTSTRAP_AUDIENCE`)
and reads the pod the token names; :func:`attest` decides from those answers alone.

Pattern: SPIRE's Kubernetes PSAT node attestor (``k8spsat``): a projected ServiceAccount
token bound to one pod and one audience, validated by the API server, then the pod it
names is checked against what the server expects. Steps:

1. the API server authenticated the token for our audience (``token_rejected``: expired,
   forged, another audience, or bound to a pod that is gone);
2. it belongs to the pool's node ServiceAccount (``wrong_service_account``);
3. it is bound to a pod, by name and uid (``unbound_token``: a long-lived or
   TokenRequest token without a pod binding proves nothing about the workload);
4. that pod is the node the request speaks for — the request's node id and its CSR's
   (``wrong_pod``: a token relayed from another pod);
5. the pod exists with that uid, belongs to this pool (owner reference to the NodePool's
   uid and the pool label: a pod the operator created), and is not terminating
   (``foreign_pod``, ``pod_gone``).

Nothing here trusts the network address a request came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pqmpc_operator.builders import LABEL_POOL, node_service_account_name

__all__ = ["POD_NAME_CLAIM", "POD_UID_CLAIM", "AttestationRefused", "AttestedPod", "attest"]

POD_NAME_CLAIM = "authentication.kubernetes.io/pod-name"
POD_UID_CLAIM = "authentication.kubernetes.io/pod-uid"


class AttestationRefused(ValueError):
    """The request does not prove it comes from the node pod it names; ``reason`` is a stable label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class AttestedPod:
    """The node pod a token was proven to come from."""

    name: str
    uid: str


def _claim(extra: Mapping[str, Any], key: str) -> str:
    value = extra.get(key)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    return ""


def attest(
    review_status: Mapping[str, Any],
    pod: Mapping[str, Any] | None,
    *,
    namespace: str,
    pool: str,
    pool_uid: str,
    node_id: str,
    csr_node_id: object,
) -> AttestedPod:
    """Decide whether a TokenReview answer and the pod it names attest ``node_id`` (module docstring)."""
    if not review_status.get("authenticated"):
        why = str(review_status.get("error") or "no reason given")
        raise AttestationRefused("token_rejected", f"the API server did not accept the attestation token: {why}")
    user = review_status.get("user") or {}
    expected_user = f"system:serviceaccount:{namespace}:{node_service_account_name(pool)}"
    if user.get("username") != expected_user:
        raise AttestationRefused("wrong_service_account",
                                 f"the token belongs to {user.get('username')!r}, not to the pool's node "
                                 f"ServiceAccount {expected_user!r}")
    extra = user.get("extra") or {}
    pod_name, pod_uid = _claim(extra, POD_NAME_CLAIM), _claim(extra, POD_UID_CLAIM)
    if not pod_name or not pod_uid:
        raise AttestationRefused("unbound_token", "the token is not bound to a pod; nodes must send the projected "
                                                  "serviceAccountToken their pod spec mounts")
    if pod_name != node_id or csr_node_id != node_id:
        raise AttestationRefused("wrong_pod", f"the token is bound to pod {pod_name!r} but the request speaks for "
                                              f"{node_id!r} (CSR: {csr_node_id!r}); a relayed token is refused")
    if pod is None:
        raise AttestationRefused("pod_gone", f"pod {namespace}/{pod_name} does not exist")
    meta = pod.get("metadata") or {}
    if meta.get("uid") != pod_uid:
        raise AttestationRefused("pod_gone", f"pod {namespace}/{pod_name} was replaced (uid {meta.get('uid')}, "
                                             f"token bound to {pod_uid})")
    owned = any(ref.get("uid") == pool_uid for ref in meta.get("ownerReferences") or [])
    if not owned or (meta.get("labels") or {}).get(LABEL_POOL) != pool:
        raise AttestationRefused("foreign_pod", f"pod {namespace}/{pod_name} was not created by the operator for "
                                                f"pool {pool}")
    if meta.get("deletionTimestamp"):
        raise AttestationRefused("pod_gone", f"pod {namespace}/{pod_name} is terminating")
    return AttestedPod(pod_name, pod_uid)
