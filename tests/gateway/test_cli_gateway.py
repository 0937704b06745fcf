"""``pqmpc … --gateway``: a wrong gateway address or a node URL that is no external name gets one line
saying what to pass, before anything is sent; the client's URL and name helpers."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from typer.testing import CliRunner

from pqmpc_node.cli import app
from pqmpc_node.client import ClientError, gateway_domain, parse_gateway
from pqmpc_node.crypto.pki import PoolCA
from pqmpc_node.crypto.suites import SuiteName, get_suite


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    ca = PoolCA.create(get_suite(SuiteName.PQ_DEFAULT), name="t", now=dt.datetime.now(dt.timezone.utc),
                       lifetime=dt.timedelta(days=1), rng=os.urandom)
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.certificate.public_bytes(Encoding.PEM))
    return path


def test_parse_gateway() -> None:
    assert parse_gateway("203.0.113.7:443") == ("203.0.113.7", 443)
    assert parse_gateway("[2001:db8::1]:31443") == ("2001:db8::1", 31443)
    assert parse_gateway("gw.example.com:443") == ("gw.example.com", 443)
    for bad in ("203.0.113.7", ":443", "gw:0", "gw:http", "gw:70000"):
        with pytest.raises(ClientError, match="is not HOST:PORT"):
            parse_gateway(bad)


def test_gateway_domain() -> None:
    assert gateway_domain("https://banks-a-0.banks.example.com") == "banks.example.com"
    assert gateway_domain("https://Banks-A-0.Banks.Example.com.:8443/") == "banks.example.com"
    for bad in ("https://10.0.0.5:8443", "https://localhost", "https://"):
        with pytest.raises(ClientError, match=r"https://<node-id>\.<domain>"):
            gateway_domain(bad)


@pytest.mark.parametrize(("args", "says"), [
    (["--gateway", "nonsense"], "--gateway 'nonsense' is not HOST:PORT"),
    (["--gateway", "127.0.0.1:9", "--node", "https://10.0.0.5:8443"], "name the node as https://<node-id>.<domain>"),
])
def test_cli_mistakes_get_one_line(args: list[str], says: str, ca_file: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ident = tmp_path / "a.json"
    assert runner.invoke(app, ["identity", "new", "a", "--out", str(ident)]).exit_code == 0
    base = {"--node": "https://banks-a-0.banks.example.com"}
    opts = dict(zip(args[::2], args[1::2]))
    merged = [x for k, v in {**base, **opts}.items() for x in (k, v)]
    for command in (["keys", "fetch"], ["submit", "--session", "ns.s.1", "--identity", str(ident),
                                        "--insecure-skip-plan-verification"]):
        extra = [str(tmp_path / "data.csv")] if command[0] == "submit" else []
        r = runner.invoke(app, [*command, *merged, "--ca", str(ca_file), *extra])
        assert r.exit_code == 1, r.output
        assert "Traceback" not in r.output
        assert says in " ".join(r.output.split()), r.output
