"""The signed plan of an MPCSession, kept in a Secret the session owns.

When the operator delivers a plan it first writes the signed plan (canonical JSON
bytes) into the Secret ``<session>-plan`` in the session's namespace — persist before
distribute: no party holds a plan the operator could not find again. The Secret has a
controller owner reference to the MPCSession, so the garbage collector deletes it with
the session, and labels naming the session. The dealer reads the plan back from here
(never from a party, which could serve any plan), and still checks its digest against
``status.planDigest`` and the pool plan signer's signature.

Why a Secret: the plan holds no key material (dealer-free sessions have no dealer seed
at all, and the dealer's seeds are never in a plan) — only public data such as the
parties' addresses, certificate fingerprints and KEM public keys, the program and the
data owners' identities. A Secret keeps it out of casual ``kubectl get configmaps``
listings and ties its lifetime to the session's.

Pure helpers build and check the object; :func:`store_plan` and :func:`load_plan` are
the thin shells over :class:`~pqmpc_operator.kube.ClusterApi`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from pqmpc_operator.builders import MANAGED_BY
from pqmpc_operator.kube import ClusterApi
from pqmpc_operator.model import API_GROUP, API_VERSION

__all__ = [
    "LABEL_SESSION", "PLAN_KEY", "PlanSecretError", "build_plan_secret", "load_plan", "plan_from_secret",
    "plan_secret_name", "store_plan",
]

PLAN_KEY = "plan.json"
LABEL_SESSION = f"{API_GROUP}/session"


class PlanSecretError(Exception):
    """The session's plan Secret is missing, not owned by this session, or holds no readable plan."""


def plan_secret_name(session: str) -> str:
    """``<session>-plan``: the Secret holding an MPCSession's signed plan."""
    return f"{session}-plan"


def build_plan_secret(session: Mapping[str, Any], signed_plan: bytes, *, generation: int,
                      digest: str) -> dict[str, Any]:
    """The plan Secret for ``session`` (its body as stored: name, namespace, uid), owned by the session."""
    meta = session["metadata"]
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {
            "name": plan_secret_name(str(meta["name"])),
            "namespace": str(meta["namespace"]),
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/part-of": "pqmpc",
                       LABEL_SESSION: str(meta["name"])},
            "annotations": {f"{API_GROUP}/plan-generation": str(generation), f"{API_GROUP}/plan-digest": digest},
            "ownerReferences": [{
                "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "MPCSession", "name": str(meta["name"]),
                "uid": str(meta.get("uid", "")), "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "data": {PLAN_KEY: base64.b64encode(signed_plan).decode("ascii")},
    }


def plan_from_secret(secret: Mapping[str, Any] | None, *, session_uid: str, name: str) -> bytes:
    """The signed plan bytes from the session's Secret, or :class:`PlanSecretError` saying why not.

    A Secret whose controller is not this MPCSession (same name, another owner: a leftover
    of a deleted session of that name, or someone else's object) is never trusted.
    """
    if secret is None:
        raise PlanSecretError(f"Secret {name} is missing")
    owners = (secret.get("metadata") or {}).get("ownerReferences") or []
    if not any(o.get("uid") == session_uid and o.get("controller") and o.get("kind") == "MPCSession" for o in owners):
        raise PlanSecretError(f"Secret {name} is not owned by this MPCSession (uid {session_uid})")
    raw = (secret.get("data") or {}).get(PLAN_KEY)
    if not raw:
        raise PlanSecretError(f"Secret {name} has no {PLAN_KEY}")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise PlanSecretError(f"Secret {name}: {PLAN_KEY} is not base64") from None


async def store_plan(api: ClusterApi, session: Mapping[str, Any], signed_plan: bytes, *, generation: int,
                     digest: str) -> None:
    """Write (server-side apply) the session's plan Secret; a newer generation replaces the older one."""
    await api.apply(build_plan_secret(session, signed_plan, generation=generation, digest=digest))


async def load_plan(api: ClusterApi, *, namespace: str, session: str, session_uid: str) -> bytes:
    """The signed plan the operator stored for the session, or :class:`PlanSecretError`."""
    name = plan_secret_name(session)
    return plan_from_secret(await api.read_secret(namespace, name), session_uid=session_uid, name=name)
