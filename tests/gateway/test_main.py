"""``python -m pqmpc_node.gateway``'s options: the command line, else the ``PQMPC_GATEWAY_*`` variables the
operator's Deployment sets, and a clear refusal of a bad address."""

from __future__ import annotations

import pytest

from pqmpc_node.gateway.__main__ import parse_args


def test_environment_supplies_what_the_deployment_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"NAMESPACE": "ns", "POOL": "banks", "DOMAIN": "banks.example.com",
                       "LISTEN": "10.1.2.3:8443", "API_PORT": "9443"}.items():
        monkeypatch.setenv(f"PQMPC_GATEWAY_{key}", value)
    args = parse_args([])
    assert (args.namespace, args.pool, args.domain, args.listen, args.api_port) == (
        "ns", "banks", "banks.example.com", ("10.1.2.3", 8443), 9443)
    assert parse_args(["--listen", "[fd00::5]:443"]).listen == ("fd00::5", 443)


def test_required_without_environment_and_bad_listen(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    for key in ("NAMESPACE", "POOL", "DOMAIN", "LISTEN", "API_PORT"):
        monkeypatch.delenv(f"PQMPC_GATEWAY_{key}", raising=False)
    with pytest.raises(SystemExit):
        parse_args([])
    assert "--namespace" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--namespace", "n", "--pool", "p", "--domain", "d", "--listen", "nowhere"])
    assert "'nowhere' is not HOST:PORT" in capsys.readouterr().err
    assert parse_args(["--namespace", "n", "--pool", "p", "--domain", "d"]).listen == ("0.0.0.0", 8443)
