"""A client binds what it trusts: a verified plan, of this session, held by more than one party (issue 12, finding 4).

Real node processes on loopback. Attacks: a client without the plan-signing key (refused
unless the user explicitly opts out), an entry node that serves a validly signed plan of
*another* session, and an entry node holding another generation of the session's plan
than the other parties — each is refused before anything is sealed.
"""

from __future__ import annotations

from typing import Any

from dataclasses import replace

import httpx
import pytest

from harness import Operator
from pqmpc_node.client import ClientError, Identity, SessionClient
from pqmpc_node.plan import FieldDecl

FIELDS = [FieldDecl("amount", 0, 1000)]
PROGRAM = {"aggregate": [{"op": "sum", "field": "amount"}]}


@pytest.fixture(scope="module")
def trio(operator: Operator) -> list[Any]:
    nodes = operator.start_nodes(3)
    operator.certify(nodes)
    return nodes


def plan_for(operator: Operator, nodes: list[Any], sid: str, owner: Identity, auditor: Identity, generation: int = 1) -> Any:
    return operator.plan(sid, nodes, program=PROGRAM, owners=[owner], fields=FIELDS,
                         recipients={auditor: ["sum(amount)"]}, generation=generation)


def test_a_client_without_the_plan_signing_key_is_refused(operator: Operator, trio: Any) -> None:
    with pytest.raises(ClientError) as err:
        SessionClient(node_url=trio[0].url, session_id="any", ca_certificate=operator.ca.certificate, plan_signer=None)
    assert err.value.reason == "plan_signer_required" and "--insecure-skip-plan-verification" in str(err.value)


def test_an_entry_node_serving_another_sessions_plan_is_refused(operator: Operator, trio: Any) -> None:
    owner, auditor = Identity.generate("bank-a"), Identity.generate("auditor")
    for sid in ("bind-a", "bind-b"):
        operator.post_plan(plan_for(operator, trio, sid, owner, auditor), trio, dealer=False)
    other = operator.http.get(f"{trio[0].url}/v1/sessions/bind-b/plan").content

    def hostile(request: httpx.Request) -> httpx.Response:
        """The entry node answers every plan request with session bind-b's (validly signed) plan."""
        if request.url.path.endswith("/plan"):
            return httpx.Response(200, content=other, headers={"Content-Type": "application/json"})
        return httpx.Response(502)

    with httpx.Client(transport=httpx.MockTransport(hostile)) as http, pytest.raises(ClientError) as err:
        SessionClient(node_url=trio[0].url, session_id="bind-a", ca_certificate=operator.ca.certificate,
                      plan_signer=operator.signer.public_key(), http=http)
    assert err.value.reason == "wrong_session", err.value


def test_parties_holding_different_plans_are_refused(operator: Operator, trio: Any) -> None:
    """The entry node keeps generation 1 while the operator re-planned the others to generation 2."""
    owner, auditor = Identity.generate("bank-a"), Identity.generate("auditor")
    operator.post_plan(plan_for(operator, trio, "bind-gen", owner, auditor, 1), trio, dealer=False)
    operator.post_plan(plan_for(operator, trio, "bind-gen", owner, auditor, 2), trio[1:], dealer=False)
    with pytest.raises(ClientError) as err:
        SessionClient(node_url=trio[0].url, session_id="bind-gen", ca_certificate=operator.ca.certificate,
                      plan_signer=operator.signer.public_key())
    assert err.value.reason == "plans_disagree" and "generation 1" in str(err.value), err.value
    # Once the operator's re-plan has reached every party, the same client call works.
    operator.post_plan(plan_for(operator, trio, "bind-gen", owner, auditor, 2), trio[:1], dealer=False)
    with SessionClient(node_url=trio[1].url, session_id="bind-gen", ca_certificate=operator.ca.certificate,
                       plan_signer=operator.signer.public_key()) as client:
        assert client.plan.generation == 2


def test_an_envelope_sealed_under_another_plan_version_is_refused(operator: Operator, trio: Any) -> None:
    """The owner sealed for generation 1; the session now runs generation 2 with another output policy."""
    owner, auditor, mallory = Identity.generate("bank-a"), Identity.generate("auditor"), Identity.generate("mallory")
    operator.post_plan(plan_for(operator, trio, "bind-env", owner, auditor, 1), trio, dealer=False)
    with SessionClient(node_url=trio[0].url, session_id="bind-env", ca_certificate=operator.ca.certificate,
                       plan_signer=operator.signer.public_key()) as client:
        sealed = client.seal_rows(owner, {"amount": ["1", "2"]})
    # A re-plan that adds a recipient: the owner never agreed to mallory learning the sum.
    widened = operator.plan("bind-env", trio, program=PROGRAM, owners=[owner], fields=FIELDS,
                            recipients={auditor: ["sum(amount)"], mallory: ["sum(amount)"]}, generation=2)
    operator.post_plan(widened, trio, dealer=False)
    party, envelope = sealed[0]
    r = operator.http.post(f"{trio[party.plan.index].url}/v1/sessions/bind-env/inputs", content=envelope,
                           headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 403 and r.json()["error"]["reason"] == "wrong_plan", r.text
    assert "generation 1" in r.json()["error"]["message"] and "generation 2" in r.json()["error"]["message"]
    assert operator.metric(trio[party.plan.index], "pqmpc_node_envelopes_refused_total") >= 1


def test_a_replan_with_other_terms_drops_the_inputs_accepted_before(operator: Operator, trio: Any) -> None:
    """Inputs accepted under generation 1 are not carried into a generation 2 that widens the outputs;
    a re-sent plan with the same terms keeps them (an operator restart must not cost owners a resubmit)."""
    owner, auditor, mallory = Identity.generate("bank-a"), Identity.generate("auditor"), Identity.generate("mallory")
    first = plan_for(operator, trio, "bind-keep", owner, auditor, 1)
    operator.post_plan(first, trio, dealer=False)
    with SessionClient(node_url=trio[0].url, session_id="bind-keep", ca_certificate=operator.ca.certificate,
                       plan_signer=operator.signer.public_key()) as client:
        client.submit_rows(owner, {"amount": ["1", "2"]})

    def inputs_held() -> list[dict[str, int]]:
        return [operator.http.get(f"{n.url}/v1/sessions/bind-keep").json()["inputRows"] for n in trio]

    assert inputs_held() == [{"bank-a": 2}] * 3
    # The operator re-sending after a restart: same terms and deadline, a fresh signature window.
    operator.post_plan(replace(first, generation=2, issued_at=first.issued_at + 5, not_after=first.not_after + 5),
                       trio, dealer=False)
    assert inputs_held() == [{"bank-a": 2}] * 3  # same terms, re-sent: kept
    later = replace(first, generation=3, deadline=first.deadline + 3600)
    operator.post_plan(later, trio, dealer=False)
    assert inputs_held() == [{}] * 3  # a later deadline is other terms: the owner did not agree to wait longer
    with SessionClient(node_url=trio[0].url, session_id="bind-keep", ca_certificate=operator.ca.certificate,
                       plan_signer=operator.signer.public_key()) as client:
        client.submit_rows(owner, {"amount": ["1", "2"]})  # the owner consents again, under generation 3
    widened = operator.plan("bind-keep", trio, program=PROGRAM, owners=[owner], fields=FIELDS,
                            recipients={auditor: ["sum(amount)"], mallory: ["sum(amount)"]}, generation=4)
    operator.post_plan(widened, trio, dealer=False)
    assert inputs_held() == [{}] * 3  # other terms: dropped, the owner must consent again
