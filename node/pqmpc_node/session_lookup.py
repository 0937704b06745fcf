"""``--session NAME``: from an MPCSession's name to the session id the nodes know it by.

Nodes know a session by ``status.sessionId`` (``<namespace>.<name>.<uid8>``, set by the
operator), users by the MPCSession's name. :func:`resolve_session` decides: a value
shaped like a session id is used as it is; anything else is looked up as an MPCSession
with the user's kubeconfig (:class:`KubeSessionLookup`, the ``kubernetes`` client) when
one is available. With no kubeconfig or no reachable API the value is used as given and
a node that does not know it answers with the ``kubectl … jsonpath`` hint
(:class:`pqmpc_node.client.SessionClient`).

The decision is pure and takes the lookup as a function (tests pass a fake at this
seam); the ``kubernetes`` package is imported only when a lookup actually runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KubeSessionLookup",
    "LookupAnswer",
    "SessionLookupError",
    "SessionResolution",
    "looks_like_session_id",
    "resolve_session",
]

GROUP, VERSION, PLURAL = "pqmpc.io", "v1alpha1", "mpcsessions"
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
SESSION_ID = re.compile(rf"^{_LABEL}\.{_LABEL}(\.{_LABEL})*\.[0-9a-f]{{8}}$")
"""``<namespace>.<name>.<first 8 hex digits of the MPCSession's uid>`` (the name may hold dots)."""


class SessionLookupError(Exception):
    """The MPCSession was found but cannot name a session yet, or was refused: say what and what to do."""


def looks_like_session_id(value: str) -> bool:
    """Whether ``value`` has the shape of ``status.sessionId`` (``default.fraud-stats.1a2b3c4d``)."""
    return SESSION_ID.fullmatch(value) is not None


@dataclass(frozen=True)
class LookupAnswer:
    """What the cluster said about ``namespace/name``.

    ``reachable`` False: no kubeconfig, or no API server answered (``why`` says which);
    ``found`` False: the API answered that no such MPCSession exists; else
    ``session_id`` is ``status.sessionId`` ("" while the operator has not set it) and
    ``phase`` its ``status.phase``.
    """

    namespace: str
    reachable: bool
    found: bool = False
    session_id: str = ""
    phase: str = ""
    why: str = ""


@dataclass(frozen=True)
class SessionResolution:
    """The session id to use, and a line for the user saying where it came from (empty: used as given)."""

    session_id: str
    note: str = ""


Lookup = Callable[[str, str | None], LookupAnswer]
"""``lookup(name, namespace)``: ``namespace`` None means the kubeconfig context's namespace."""


def resolve_session(value: str, namespace: str | None, lookup: Lookup) -> SessionResolution:
    """The session id for ``--session value`` (see the module docstring).

    Raises :class:`SessionLookupError` when the MPCSession exists but has no session id
    yet; an unreachable cluster or an unknown name leaves ``value`` as given (the node's
    answer then carries the hint).
    """
    if looks_like_session_id(value):
        return SessionResolution(value)
    answer = lookup(value, namespace)
    if not answer.reachable:
        return SessionResolution(value, f"--session {value} is not a session id and the MPCSession could not be "
                                        f"looked up ({answer.why}); using it as given")
    if not answer.found:
        return SessionResolution(value, f"no MPCSession {value!r} in namespace {answer.namespace!r} (pass "
                                        "--namespace/-n for another); using it as given")
    if not answer.session_id:
        raise SessionLookupError(
            f"MPCSession {answer.namespace}/{value} has no status.sessionId yet (phase {answer.phase or 'not set'}): "
            f"the operator has not planned it; see `kubectl describe mpcs {value} -n {answer.namespace}`")
    return SessionResolution(answer.session_id,
                             f"MPCSession {answer.namespace}/{value} is session {answer.session_id}")


@dataclass(frozen=True)
class KubeSessionLookup:
    """:data:`Lookup` with the user's kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``; ``kubeconfig`` overrides).

    Short timeouts: a CLI command must not hang on a cluster it only asks a name of.
    """

    kubeconfig: str | None = None
    timeout_s: float = 5.0

    def __call__(self, name: str, namespace: str | None) -> LookupAnswer:
        import urllib3  # imported here, with the kubernetes client: only a name (not an id) needs them
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        # $KUBECONFIG as it is now (the kubernetes package reads it once, at import):
        path = self.kubeconfig or os.environ.get("KUBECONFIG") or None
        configuration = client.Configuration()
        try:
            config.load_kube_config(config_file=path, client_configuration=configuration)  # type: ignore[no-untyped-call]
            if namespace is None:
                _, active = config.list_kube_config_contexts(config_file=path)  # type: ignore[no-untyped-call]
                namespace = str((active or {}).get("context", {}).get("namespace") or "default")
        except (ConfigException, OSError, TypeError, ValueError) as exc:
            return LookupAnswer(namespace or "default", reachable=False, why=f"no usable kubeconfig: {exc}")
        configuration.retries = False  # one attempt: an unreachable cluster must not hold the command up
        with client.ApiClient(configuration) as api_client:
            try:
                body: Any = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, _request_timeout=self.timeout_s)
            except client.ApiException as exc:
                if exc.status == 404:
                    return LookupAnswer(namespace, reachable=True, found=False)
                if exc.status in (401, 403):
                    raise SessionLookupError(
                        f"the cluster refused to show MPCSession {namespace}/{name} (HTTP {exc.status}); pass the "
                        "session id instead: kubectl get mpcs NAME -n NAMESPACE -o jsonpath='{.status.sessionId}'"
                    ) from None
                return LookupAnswer(namespace, reachable=False, why=f"the API server answered HTTP {exc.status}")
            except (urllib3.exceptions.HTTPError, OSError) as exc:  # refused, timed out: not reachable
                return LookupAnswer(namespace, reachable=False, why=f"the API server is not reachable: "
                                                                    f"{type(exc).__name__}")
        status = (body.get("status") or {}) if isinstance(body, dict) else {}
        return LookupAnswer(namespace, reachable=True, found=True, session_id=str(status.get("sessionId") or ""),
                            phase=str(status.get("phase") or ""))
