"""A client binds what it trusts: a verified plan, of this session, held by more than one party (issue 12, finding 4).

Real node processes on loopback. Attacks: a client without the plan-signing key (refused
unless the user explicitly opts out), an entry node that serves a validly signed plan of
*another* session, and an entry node holding another generation of the session's plan
than the other parties — each is refused before anything is sealed.
"""

from __future__ import annotations

from typing import Any

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
