"""Attacks on the node API's transport: it speaks post-quantum TLS only, and whoever answers
at a node's address must be that node.

Real node processes (the node tests' harness); the clients are the project's own (the
``pqmpc`` SDK's :func:`~pqmpc_node.client.node_http_client`, the operator's
:class:`~pqmpc_operator.nodeclient.NodeClient`) plus deliberately weakened ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from harness import Operator
from pqmpc_node.client import ClientError, Identity, SessionClient
from pqmpc_node.crypto.pki import PoolCA
from pqmpc_node.crypto.transparency import LogBundle, LogVerifier
from pqmpc_node.net.https import pq_transport
from pqmpc_node.plan import FieldDecl
from pqmpc_operator.nodeclient import NodeCallError, NodeClient, PoolTrust


@pytest.fixture(scope="module")
def trio(operator: Operator) -> list[Any]:
    nodes = operator.start_nodes(3)
    operator.certify(nodes)
    return nodes


@contextlib.contextmanager
def forwarder(host: str, target: tuple[str, int]) -> Iterator[int]:
    """A TCP relay listening on ``host`` that pipes every connection to ``target`` (bytes only)."""
    server = socket.create_server((host, 0))
    stop = threading.Event()

    def pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                b.shutdown(socket.SHUT_WR)
            a.close()  # each socket is the reading end of exactly one pipe

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(target)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def refusals(operator: Operator, node: Any, reason: str) -> float:
    text = operator.plain.get(node.metrics_url + "/metrics").text
    label = f'reason="{reason}"'
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("pqmpc_node_handshake_failures_total") and label in line)


def test_a_classical_only_client_cannot_reach_the_node_api(operator: Operator, trio: list[Any]) -> None:
    before = refusals(operator, trio[0], "api_no_shared_group")
    classical = pq_transport(operator.ca.certificate, operator.suite, offer_groups=["X25519"])
    with httpx.Client(transport=classical) as http, pytest.raises(httpx.ConnectError):
        http.get(trio[0].url + "/v1/keys")
    # The node counts the refusal once it has sent its alert, a moment after the client saw it.
    deadline = time.monotonic() + 30
    while refusals(operator, trio[0], "api_no_shared_group") != before + 1:
        assert time.monotonic() < deadline, "the node never counted the refused handshake"
        time.sleep(0.05)
    assert operator.http.get(trio[0].url + "/v1/keys").status_code == 200  # and it still serves PQ clients


def test_plain_http_to_the_api_port_gets_nothing(operator: Operator, trio: list[Any]) -> None:
    with httpx.Client() as http, pytest.raises(httpx.HTTPError):
        http.get(f"http://{trio[0].host}:{trio[0].api_port}/v1/keys")
    assert operator.http.get(trio[0].url + "/v1/keys").status_code == 200


def test_a_server_with_another_pools_certificate_is_refused(operator: Operator, trio: list[Any]) -> None:
    """The client trusts its pool's CA only: a parallel PKI cannot stand in for the node."""
    other = PoolCA.create(operator.suite, name="other-ca", now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5),
                          lifetime=dt.timedelta(days=1), rng=os.urandom)
    with httpx.Client(transport=pq_transport(other.certificate, operator.suite)) as http, \
            pytest.raises(httpx.ConnectError, match="wrong_ca"):
        http.get(trio[0].url + "/v1/keys")


def test_a_node_answering_at_another_nodes_address_is_refused_by_the_client(operator: Operator,
                                                                            trio: list[Any]) -> None:
    """A certified node of the same pool is still not the party the plan names at that address."""
    owner, auditor = Identity.generate("bank-a"), Identity.generate("auditor")
    plan = operator.plan("tls-bind", trio, program={"aggregate": [{"op": "sum", "field": "x"}]}, owners=[owner],
                         fields=[FieldDecl("x", 0, 10)], recipients={auditor: ["sum(x)"]})
    operator.post_plan(plan, trio, dealer=False)
    with SessionClient(node_url=trio[0].url, session_id="tls-bind", ca_certificate=operator.ca.certificate,
                       plan_signer=operator.signer.public_key()) as client:
        # At node 1's address (another port), node 2's API answers: an address mix-up or a hijack.
        with forwarder(trio[1].host, (trio[2].host, trio[2].api_port)) as port:
            client.url_of = lambda p: (f"https://{p.address}:{port}" if p.node_id == trio[1].node_id
                                       else f"https://{p.address}:{p.api_port}")
            with pytest.raises(ClientError) as err:
                client.parties()
    # Refused in the TLS handshake, before any request: the certificate names node 2, not node 1.
    assert err.value.reason == "unreachable", err.value
    assert f"certificate names node '{trio[2].node_id}'; expected {trio[1].node_id}" in str(err.value), err.value


def test_the_operator_refuses_a_node_at_an_address_it_does_not_expect(operator: Operator, trio: list[Any]) -> None:
    """The operator dials pod IPs the API server reports; the node there must be that pod."""
    bundle = LogBundle(operator.log.entries, operator.log.signed_tree_head(now=dt.datetime.now(dt.timezone.utc)))

    def checker() -> LogVerifier:
        verifier = LogVerifier(operator.ca.public_key)
        verifier.update(bundle.entries, bundle.tree_head)
        return verifier

    def directory(expected: dict[str, str]) -> Any:
        return lambda ip: (PoolTrust(operator.ca.certificate, operator.suite, checker, expected[ip])
                           if ip in expected else None)

    async def call(expected: dict[str, str]) -> dict[str, Any]:
        nodes = NodeClient(trio[0].api_port, directory(expected), timeout=10.0)
        try:
            return await nodes.keys(trio[0].host)
        finally:
            await nodes.aclose()

    assert asyncio.run(call({trio[0].host: trio[0].node_id}))["nodeId"] == trio[0].node_id
    with pytest.raises(NodeCallError, match="wrong_identity|names node"):
        asyncio.run(call({trio[0].host: trio[1].node_id}))  # the API server says node 1 lives there
    with pytest.raises(NodeCallError, match="not the address of a node pod"):
        asyncio.run(call({}))
