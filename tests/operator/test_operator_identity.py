"""The operator's kopf settings: its Events come from ``pqmpc-operator``, not kopf's default ``kopf``.

Also: a deleted session's ``pqmpc_session_phase`` series are removed (the delete handler
and the session daemon's exit both call :meth:`OperatorMetrics.observe_session` with None).
"""

from __future__ import annotations

import kopf

from pqmpc_operator.handlers import EVENT_SOURCE, configure_kopf
from pqmpc_operator.metrics import OperatorMetrics


def test_events_are_reported_by_the_operator() -> None:
    settings = kopf.OperatorSettings()
    assert settings.posting.reporting_component == "kopf"  # what kopf would write otherwise
    configure_kopf(settings, instance="pqmpc-operator-7d9f-abcde")
    # kopf writes these into each Event's source.component / reportingComponent (describe's "From").
    assert (settings.posting.reporting_component, EVENT_SOURCE) == ("pqmpc-operator", "pqmpc-operator")
    assert settings.posting.reporting_instance == "pqmpc-operator-7d9f-abcde"
    assert settings.persistence.finalizer == "pqmpc.io/operator"


def test_forgetting_a_session_removes_every_phase_series() -> None:
    metrics = OperatorMetrics()
    metrics.observe_session("default", "hqs", "Failed")
    metrics.observe_session("default", "other", "Computing")
    metrics.observe_session("default", "hqs", None)
    left = {tuple(s.labels.values()) for m in metrics.session_phase.collect() for s in m.samples}
    assert left and all(session == "other" for _, session, _ in left)
    metrics.observe_session("default", "hqs", None)  # twice: nothing to remove, no error
