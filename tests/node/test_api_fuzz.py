"""Fuzzed API bodies (hypothesis) against a real node process: always a 4xx JSON error, never a 5xx or a crash."""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import Operator

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
plan_like = st.fixed_dictionaries({"plan": st.dictionaries(
    st.sampled_from(["format", "sessionId", "pool", "parties", "program", "inputs", "outputs", "generation"]),
    json_values, max_size=8), "signature": st.text(max_size=30)})
bodies = st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode()),
                   plan_like.map(lambda v: json.dumps(v).encode()))
PATHS = ["/v1/sessions", "/v1/certificate", "/v1/log", "/v1/sessions/agg-x/inputs", "/v1/sessions/fuzz/inputs"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), body=bodies)
def test_fuzzed_bodies_get_4xx(operator: Operator, trio: Any, path: str, body: bytes) -> None:
    r = operator.http.post(trio[0].url + path, content=body)
    assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text)
    assert "reason" in r.json()["error"]


def test_oversized_and_unknown(operator: Operator, trio: Any) -> None:
    r = operator.http.post(trio[0].url + "/v1/sessions", content=b"x" * (5 << 20))
    assert r.status_code == 413 and r.json()["error"]["reason"] == "too_large"
    assert operator.http.get(trio[0].url + "/v1/nothing").status_code == 404
    assert operator.http.get(trio[0].url + "/v1/sessions/nope").json()["error"]["reason"] == "unknown_session"
    r = operator.http.post(trio[0].url + "/v1/log", json={"entries": ["%%%"], "treeHead": ""})
    assert r.status_code == 400 and r.json()["error"]["reason"] == "malformed", r.text
    assert trio[0].proc.poll() is None
    assert httpx.get(trio[0].metrics_url + "/healthz").status_code == 200
