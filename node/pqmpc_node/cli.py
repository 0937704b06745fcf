"""``pqmpc``: the command-line tool of data owners and output recipients (typer + rich).

Commands::

    pqmpc identity new NAME --out NAME.identity.json [--suite pq-default|pq-high]
    pqmpc keys fetch --node https://IP:8443 --ca ca.pem [--out keys.json]
    pqmpc keys verify --node https://IP:8443 --ca ca.pem [--node-id ID]
    pqmpc submit --session ID --identity FILE --node URL --ca ca.pem --plan-signer FILE data.csv|model.json
    pqmpc result --session ID --identity FILE --node URL --ca ca.pem --plan-signer FILE [--json]

Every failure prints one line saying what was wrong and exits 1; nothing is sent
before the whole input has been validated.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import httpx
import typer
from cryptography import x509
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from pqmpc_node.client import (
    ClientError,
    Identity,
    NodeClient,
    SessionClient,
    fetch_verified_keys,
    node_http_client,
    read_csv,
)
from pqmpc_node.crypto.pki import CertificateError, suite_of_ca
from pqmpc_node.crypto.suites import MLDSAPublicKey, SuiteName, get_suite
from pqmpc_node.crypto.trust_anchors import TrustAnchorError, parse_ca_certificate, parse_plan_signer
from pqmpc_node.plan import PlanParty

__all__ = ["app", "main"]

app = typer.Typer(help="Submit inputs to and collect results from pqmpc MPC sessions.", no_args_is_help=True)
identity_app = typer.Typer(help="Data-owner / recipient identities.", no_args_is_help=True)
keys_app = typer.Typer(help="Node KEM keys.", no_args_is_help=True)
app.add_typer(identity_app, name="identity")
app.add_typer(keys_app, name="keys")
err = Console(stderr=True)
out = Console()


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


_Command = TypeVar("_Command", bound=Callable[..., None])


def _friendly(command: _Command) -> _Command:
    """One clear line and exit 1 for every user mistake the command meets, never a traceback."""
    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except ClientError as exc:
            raise _fail(str(exc)) from None
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise _fail(f"{where}{exc.strerror or exc}") from None
    return cast(_Command, run)


def _suite_of(ca_cert: x509.Certificate) -> SuiteName:
    """The suite whose signature algorithm the pool CA uses (pq-default: ML-DSA-65, pq-high: ML-DSA-87)."""
    try:
        return suite_of_ca(ca_cert).name
    except CertificateError as exc:
        raise _fail(str(exc)) from None


def _trust(ca: Path, plan_signer: Path | None) -> tuple[x509.Certificate, MLDSAPublicKey | None]:
    """The pool CA certificate and (when named) the plan-signing key, parsed as the node parses them."""
    try:
        ca_cert = parse_ca_certificate(ca.read_bytes())
    except OSError as exc:
        raise _fail(f"cannot read the pool CA certificate {ca}: {exc}; it is ca.pem of the pool's <pool>-trust "
                    "ConfigMap") from None
    except TrustAnchorError as exc:
        raise _fail(f"--ca {ca}: {exc}; it is ca.pem of the pool's <pool>-trust ConfigMap") from None
    if plan_signer is None:
        return ca_cert, None
    if not plan_signer.is_file():
        raise _fail(f"--plan-signer {plan_signer}: no such file; it is plan-signer.pub of the pool's <pool>-trust "
                    "ConfigMap")
    try:
        return ca_cert, parse_plan_signer(plan_signer.read_bytes(), get_suite(_suite_of(ca_cert)))
    except (OSError, TrustAnchorError) as exc:
        raise _fail(f"--plan-signer {plan_signer}: {exc}") from None


Node = Annotated[str, typer.Option("--node", help="API URL of one node of the session, e.g. http://10.0.0.5:8443")]
Ca = Annotated[Path, typer.Option("--ca", help="The pool CA certificate (PEM) you trust")]
Signer = Annotated[Path | None, typer.Option("--plan-signer", help="The operator's plan-signing public key (PEM)")]
Insecure = Annotated[bool, typer.Option("--insecure-skip-plan-verification",
                                        help="Do not check the plan's signature (experiments only; dangerous)")]
Session = Annotated[str, typer.Option("--session", help="The MPCSession name")]
IdentityFile = Annotated[Path, typer.Option("--identity", help="Your identity file from `pqmpc identity new`")]


@identity_app.command("new")
@_friendly
def identity_new(name: str, out_file: Annotated[Path | None, typer.Option("--out")] = None,
                 suite: Annotated[SuiteName, typer.Option("--suite", help="The pool's suite (spec.keys.suite)")]
                 = SuiteName.PQ_DEFAULT) -> None:
    """Create an identity (the suite's ML-DSA signing key + envelope KEM key) and print its public part."""
    path = out_file or Path(f"{name}.identity.json")
    ident = Identity.generate(name, suite)
    try:
        ident.save(path)
    except FileExistsError:
        raise _fail(f"{path} exists; choose another --out (identities are never overwritten)") from None
    out.print_json(json.dumps(ident.public_document()))
    err.print(f"private keys written to {path} (mode 0600); put 'identity' into MPCSession inputs and "
              "'kemPublicKey' into outputs")


@keys_app.command("fetch")
@_friendly
def keys_fetch(node: Node, ca: Ca, out_file: Annotated[Path | None, typer.Option("--out")] = None) -> None:
    """Download a node's key document (certificate, KEM keys, transparency log) over PQ-TLS."""
    ca_cert, _ = _trust(ca, None)
    try:
        with node_http_client(ca_cert) as http:
            r = http.get(node.rstrip("/") + "/v1/keys")
    except ClientError as exc:
        raise _fail(str(exc)) from None
    except httpx.HTTPError as exc:
        raise _fail(f"{node}: {exc}") from None
    if r.status_code != 200:
        raise _fail(f"{node}: HTTP {r.status_code} {r.text[:200]}")
    if out_file:
        out_file.write_text(r.text)
    else:
        out.print_json(r.text)


@keys_app.command("verify")
@_friendly
def keys_verify(node: Node, ca: Ca, node_id: Annotated[str | None, typer.Option("--node-id")] = None) -> None:
    """Verify CA → node certificate → KEM key certificate → transparency log."""
    ca_cert, _ = _trust(ca, None)
    try:
        with node_http_client(ca_cert) as http:
            doc = http.get(node.rstrip("/") + "/v1/keys").json()
            nid = node_id or doc["nodeId"]
            party = PlanParty(0, nid, "-", "", 1, 1, doc["certFingerprint"], 1)
            verified = fetch_verified_keys(NodeClient(node, http=http), party, ca_certificate=ca_cert,
                                           suite=get_suite(_suite_of(ca_cert)), now=dt.datetime.now(dt.timezone.utc))
    except ClientError as exc:
        raise _fail(str(exc)) from None
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise _fail(f"{node}: cannot fetch keys: {exc}") from None
    out.print(f"[green]ok[/green] node {nid}: KEM key epoch {verified.kem.epoch} is certified and logged "
              f"(certificate {doc['certFingerprint'][:16]}…)")


def _client(node: str, session: str, ca: Path, plan_signer: Path | None, insecure: bool = False) -> SessionClient:
    ca_cert, signer = _trust(ca, plan_signer)
    if signer is None and insecure:
        err.print("[yellow]warning:[/yellow] --insecure-skip-plan-verification: the session plan's signature is not "
                  "checked (experiments only)")
    try:
        return SessionClient(node_url=node, session_id=session, ca_certificate=ca_cert, plan_signer=signer,
                             insecure_skip_plan_verification=insecure)
    except ClientError as exc:
        raise _fail(str(exc)) from None


@app.command()
@_friendly
def submit(session: Session, identity: IdentityFile, node: Node, ca: Ca, data: Path,
           plan_signer: Signer = None, insecure: Insecure = False) -> None:
    """Validate, secret-share, seal per node and post DATA (a CSV, or a model JSON for model owners)."""
    ident = Identity.load(identity)
    client = _client(node, session, ca, plan_signer, insecure)
    try:
        if data.suffix == ".json":
            try:
                params: dict[str, Any] = json.loads(data.read_text())
            except (OSError, ValueError) as exc:
                raise _fail(f"cannot read model file {data}: {exc}") from None
            sealed = client.seal_model(ident, params)
        else:
            sealed = client.seal_rows(ident, read_csv(data))
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("posting sealed shares", total=len(sealed))
            results = client.post_sealed(sealed, progress=lambda _n: progress.advance(task))
    except ClientError as exc:
        raise _fail(str(exc)) from None
    finally:
        client.close()
    out.print(f"[green]submitted[/green] to {len(results)} nodes of session {session}")


@app.command()
@_friendly
def result(session: Session, identity: IdentityFile, node: Node, ca: Ca, plan_signer: Signer = None,
           as_json: Annotated[bool, typer.Option("--json")] = False,
           wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for the outputs")] = 0.0,
           insecure: Insecure = False) -> None:
    """Collect the sealed result shares, reconstruct, check consistency, print."""
    ident = Identity.load(identity)
    client = _client(node, session, ca, plan_signer, insecure)
    try:
        res = client.collect_result(ident, wait_s=wait)
    except ClientError as exc:
        raise _fail(str(exc)) from None
    finally:
        client.close()
    if as_json:
        out.print_json(json.dumps(res))
        return
    table = Table(title=f"session {session}")
    table.add_column("output")
    table.add_column("value")
    for name, value in res["outputs"].items():
        text = res.get("exact", {}).get(name)  # the exact decimal when the value has one (a float has 53 bits)
        table.add_row(name, text if isinstance(text, str) and "/" not in text else json.dumps(value))
    out.print(table)


def main() -> None:
    """Console-script entry point."""
    app()

