"""Who is asking for a certificate: the operator's checks of a node's bootstrap attestation.

Contract: pure. The shell (:mod:`pqmpc_operator.bootstrap_server`) sends the node's token
to the API server (TokenReview, audience :data:`~pqmpc_node.crypto.pki.BOOTSTRAP_AUDIENCE`)
and reads the pod the token names; :func:`attest_token` and :func:`attest_pod` decide from those answers alone.

Pattern: SPIRE's Kubernetes PSAT node attestor (``k8spsat``): a projected ServiceAccount
token bound to one pod and one audience, validated by the API server, then the pod it
names is checked against what the server expects. Steps:

1. the API server authenticated the token for our audience and says so in
   ``status.audiences`` (``token_rejected``: expired, forged, another audience, or bound
   to a pod that is gone);
2. it belongs to the pool's node ServiceAccount (``wrong_service_account``);
3. it is bound to a pod, by name and uid (``unbound_token``: a long-lived or
   TokenRequest token without a pod binding proves nothing about the workload);
4. that pod is the node the request speaks for — the request's node id and its CSR's
   (``wrong_pod``: a token relayed from another pod);
5. the pod is one the pool wants (its name among the pool's desired pods), exists with
   that uid, carries the pool's owner reference and label, was created by this operator
   process (or existed before it started), and is not terminating (``foreign_pod``,
   ``pod_gone``). Owner references and labels are written by whoever creates a pod, so
   they alone prove nothing; the uid the operator got back from its own create does.

Nothing here trusts the network address a request came from.
"""

from __future__ import annotations

from collections.abc import Mapping, Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from pqmpc_node.crypto.pki import BOOTSTRAP_AUDIENCE
from pqmpc_operator.builders import LABEL_POOL, desired_pod_names, node_service_account_name
from pqmpc_operator.model import NodePoolSpec

__all__ = ["POD_NAME_CLAIM", "POD_UID_CLAIM", "AttestationRefused", "AttestedPod", "attest_pod", "attest_token"]

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


def attest_token(
    review_status: Mapping[str, Any], *, namespace: str, pool: str, node_id: str, csr_node_id: object,
) -> AttestedPod:
    """Steps 1-4 on the API server's TokenReview answer alone (before any pod is read)."""
    if not review_status.get("authenticated"):
        why = str(review_status.get("error") or "no reason given")
        raise AttestationRefused("token_rejected", f"the API server did not accept the attestation token: {why}")
    if BOOTSTRAP_AUDIENCE not in (review_status.get("audiences") or []):
        # An authenticator that ignores audiences answers without ours: the token may be
        # one minted for anything else (the API's contract asks callers to check this).
        raise AttestationRefused("token_rejected", f"the API server did not confirm the audience "
                                                   f"{BOOTSTRAP_AUDIENCE!r} for the token")
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
    return AttestedPod(pod_name, pod_uid)


def attest_pod(
    bound: AttestedPod,
    pod: Mapping[str, Any] | None,
    *,
    namespace: str,
    pool: NodePoolSpec,
    created_uids: AbstractSet[str],
    started_at: str,
) -> AttestedPod:
    """Step 5: the pod the token is bound to is one this operator runs for ``pool``.

    ``created_uids``: uids of the pods this operator process created; a pod it did not
    create is accepted only when it existed before the process started (``started_at``,
    RFC 3339) — a predecessor's pod, which cannot be told from any other pod made before
    the restart (the README states this residual).
    """
    name = bound.name
    if name not in desired_pod_names(pool):
        raise AttestationRefused("foreign_pod", f"pod {namespace}/{name} is not a node the pool {pool.name} wants")
    if pod is None:
        raise AttestationRefused("pod_gone", f"pod {namespace}/{name} does not exist")
    meta = pod.get("metadata") or {}
    if meta.get("uid") != bound.uid:
        raise AttestationRefused("pod_gone", f"pod {namespace}/{name} was replaced (uid {meta.get('uid')}, "
                                             f"token bound to {bound.uid})")
    owned = any(ref.get("uid") == pool.uid for ref in meta.get("ownerReferences") or [])
    if not owned or (meta.get("labels") or {}).get(LABEL_POOL) != pool.name:
        raise AttestationRefused("foreign_pod", f"pod {namespace}/{name} was not created by the operator for "
                                                f"pool {pool.name}")
    if bound.uid not in created_uids and str(meta.get("creationTimestamp") or "") >= started_at:
        raise AttestationRefused("foreign_pod", f"pod {namespace}/{name} (uid {bound.uid}) was created while this "
                                                "operator ran, but not by it")
    if meta.get("deletionTimestamp"):
        raise AttestationRefused("pod_gone", f"pod {namespace}/{name} is terminating")
    return bound
