"""``pqmpc``: the command-line tool of data owners and output recipients (typer + rich).

Commands::

    pqmpc identity new NAME --out NAME.identity.json [--suite pq-default|pq-high]
    pqmpc keys fetch --node https://IP:8443 --ca ca.pem [--gateway HOST:PORT] [--out keys.json]
    pqmpc keys verify --node https://IP:8443 --ca ca.pem [--gateway HOST:PORT] [--node-id ID]
    pqmpc submit --session NAME|ID [-n NS] --identity FILE --node URL --ca ca.pem --plan-signer FILE
                 [--gateway HOST:PORT] [--progress] [--replace] [--part-size BYTES] data.csv|model.json
    pqmpc result --session NAME|ID [-n NS] --identity FILE --node URL --ca ca.pem --plan-signer FILE
                 [--gateway HOST:PORT] [--json] [--wait SECONDS] [--progress]

From outside the cluster, through the pool's SNI gateway (``spec.externalAccess``): pass
``--gateway`` (the gateway Service's address) and name the node as
``--node https://<node-id>.<domain>``; every party is then reached as
``<node-id>.<domain>`` through the gateway, and each node's certificate must name it.
TLS still ends at the node (docs/quickstart-cluster.md).

Every failure prints one line saying what was wrong and exits 1; nothing is sent
before the whole input has been validated. ``submit --replace`` replaces an owner's
earlier input with a new signed version at every node (before the session computes;
the nodes agree on it before computing); a table too large for one envelope goes in
parts (``--part-size``), with a progress bar over them. ``--session`` takes the MPCSession name (looked
up with the kubeconfig, :mod:`pqmpc_node.session_lookup`) or its ``status.sessionId``.
Progress (bars for parsing, checking, sharing, sealing and posting; a spinner while
``result --wait`` waits) goes to stderr when it is a terminal or with ``--progress``,
never to stdout. Results are printed at each output's declared scale
(:func:`pqmpc_node.output_scale.output_decimals`); ``--json`` writes those numbers as exact
decimal literals.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import httpx
import typer
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from pqmpc_node.client import (
    ClientError,
    Identity,
    PartialSubmitError,
    ProgressFn,
    NodeClient,
    SessionClient,
    fetch_verified_keys,
    gateway_domain,
    node_http_client,
    parse_gateway,
    read_csv,
    transport_error,
)
from pqmpc_node.crypto.pki import CertificateError, suite_of_ca
from pqmpc_node.input_parts import DEFAULT_PART_BYTES
from pqmpc_node.crypto.suites import MLDSAPublicKey, SuiteName, get_suite
from pqmpc_node.crypto.trust_anchors import TrustAnchorError, parse_ca_certificate, parse_plan_signer
from pqmpc_node.plan import PlanParty
from pqmpc_node.session_lookup import KubeSessionLookup, SessionLookupError, resolve_session

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


CA_SOURCE = "kubectl get configmap <pool>-trust -n <namespace> -o jsonpath='{.data.ca\\.pem}' > ca.pem"
"""Where the right ``--ca`` comes from, for every message that blames the CA file."""


def _bad_ca(ca: Path, what: str) -> typer.Exit:
    return _fail(f"--ca {ca}: {what}; pass the pool's CA certificate (an ML-DSA certificate): {CA_SOURCE}")


def _trust(ca: Path, plan_signer: Path | None) -> tuple[x509.Certificate, MLDSAPublicKey | None]:
    """The pool CA certificate and (when named) the plan-signing key, parsed as the node parses them.

    A CA file that is not a certificate, or holds no suite's ML-DSA key (an RSA or EC
    certificate, a web server's CA bundle), is blamed here, before any node is contacted.
    """
    try:
        raw = ca.read_bytes()
    except OSError as exc:
        raise _bad_ca(ca, f"cannot read it ({exc.strerror or exc})") from None
    try:
        ca_cert = parse_ca_certificate(raw)
    except TrustAnchorError:
        raise _bad_ca(ca, "not a PEM certificate") from None
    try:
        suite = suite_of_ca(ca_cert)
    except CertificateError:
        raise _bad_ca(ca, f"a certificate with {_key_kind(ca_cert)} key, not a pqmpc pool CA") from None
    if plan_signer is None:
        return ca_cert, None
    if not plan_signer.is_file():
        raise _fail(f"--plan-signer {plan_signer}: no such file; it is plan-signer.pub of the pool's <pool>-trust "
                    "ConfigMap")
    try:
        return ca_cert, parse_plan_signer(plan_signer.read_bytes(), suite)
    except (OSError, TrustAnchorError) as exc:
        raise _fail(f"--plan-signer {plan_signer}: {exc}") from None


def _key_kind(cert: x509.Certificate) -> str:
    """``an RSA-2048``, ``an EC (secp256r1)``, ... : the key a CA file holds, for the message that refuses it."""
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"an RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"an EC ({key.curve.name})"
    return f"a {type(key).__name__.removesuffix('PublicKey')}"


def _blame_ca(exc: ClientError, ca: Path) -> ClientError:
    """A handshake the node's certificate failed against ``--ca``: the CA file is the likelier culprit."""
    if exc.reason == "wrong_ca":
        return ClientError(f"--ca {ca} did not issue the node's certificate (the TLS handshake refused it): it is "
                           f"another pool's CA, or an old one; pass the CA of the node's pool: {CA_SOURCE}", exc.reason)
    return exc


def _progress_console(forced: bool) -> Console | None:
    """Where progress goes: stderr when it is a terminal, or (``--progress``) always; None: nowhere."""
    if forced:
        return Console(stderr=True, force_terminal=True)
    return err if err.is_terminal else None


@contextlib.contextmanager
def _bars(console: Console | None) -> Iterator[ProgressFn | None]:
    """A :data:`~pqmpc_node.client.ProgressFn` drawing one rich bar per step on ``console`` (None: no progress)."""
    if console is None:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        tasks: dict[str, TaskID] = {}

        def update(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = progress.add_task(what, total=total)
            progress.update(tasks[what], completed=done, total=total)

        yield update


def _session_id(session: str, namespace: str | None) -> str:
    """``--session``: an MPCSession name is looked up with the kubeconfig (:func:`resolve_session`)."""
    try:
        resolved = resolve_session(session, namespace, KubeSessionLookup())
    except SessionLookupError as exc:
        raise _fail(str(exc)) from None
    if resolved.note:
        err.print(f"[dim]{escape(resolved.note)}[/dim]", highlight=False, soft_wrap=True)
    return resolved.session_id


Node = Annotated[str, typer.Option("--node", help="API URL of one node of the session, e.g. https://10.0.0.5:8443")]
Ca = Annotated[Path, typer.Option("--ca", help="The pool CA certificate (PEM): ca.pem of the pool's <pool>-trust "
                                             "ConfigMap")]
Signer = Annotated[Path | None, typer.Option("--plan-signer", help="The operator's plan-signing public key (PEM)")]
Insecure = Annotated[bool, typer.Option("--insecure-skip-plan-verification",
                                        help="Do not check the plan's signature (experiments only; dangerous)")]
Session = Annotated[str, typer.Option("--session", help="The MPCSession name (looked up with your kubeconfig) or "
                                                         "its status.sessionId")]
Namespace = Annotated[str | None, typer.Option("--namespace", "-n", help="The MPCSession's namespace (default: the "
                                                                           "kubeconfig context's)")]
ShowProgress = Annotated[bool, typer.Option("--progress", help="Show progress on stderr even when it is not a "
                                                                "terminal")]
GatewayAddress = Annotated[str | None, typer.Option(
    "--gateway", help="HOST:PORT of the pool's SNI gateway Service, from outside the cluster; --node is then "
                      "https://<node-id>.<domain> (the pool's spec.externalAccess.domain)")]
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
def keys_fetch(node: Node, ca: Ca, out_file: Annotated[Path | None, typer.Option("--out")] = None,
               gateway: GatewayAddress = None) -> None:
    """Download a node's key document (certificate, KEM keys, transparency log) over PQ-TLS."""
    ca_cert, _ = _trust(ca, None)
    try:
        with node_http_client(ca_cert, connect_to=_gateway(gateway, node)) as http:
            r = http.get(node.rstrip("/") + "/v1/keys")
    except ClientError as exc:
        raise _fail(str(exc)) from None
    except httpx.HTTPError as exc:
        raise _fail(str(_blame_ca(transport_error(node, exc), ca))) from None
    if r.status_code != 200:
        raise _fail(f"{node}: HTTP {r.status_code} {r.text[:200]}")
    if out_file:
        out_file.write_text(r.text)
    else:
        out.print_json(r.text)


@keys_app.command("verify")
@_friendly
def keys_verify(node: Node, ca: Ca, node_id: Annotated[str | None, typer.Option("--node-id")] = None,
                gateway: GatewayAddress = None) -> None:
    """Verify CA → node certificate → KEM key certificate → transparency log."""
    ca_cert, _ = _trust(ca, None)
    try:
        with node_http_client(ca_cert, connect_to=_gateway(gateway, node)) as http:
            doc = http.get(node.rstrip("/") + "/v1/keys").json()
            nid = node_id or doc["nodeId"]
            party = PlanParty(0, nid, "-", "", 1, 1, doc["certFingerprint"], 1)
            verified = fetch_verified_keys(NodeClient(node, http=http), party, ca_certificate=ca_cert,
                                           suite=get_suite(_suite_of(ca_cert)), now=dt.datetime.now(dt.timezone.utc))
    except ClientError as exc:
        raise _fail(str(_blame_ca(exc, ca))) from None
    except httpx.HTTPError as exc:
        raise _fail(str(_blame_ca(transport_error(node, exc), ca))) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise _fail(f"{node}: cannot fetch keys: {exc}") from None
    out.print(f"[green]ok[/green] node {nid}: KEM key epoch {verified.kem.epoch} is certified and logged "
              f"(certificate {doc['certFingerprint'][:16]}…)")


def _gateway(text: str | None, node: str) -> tuple[str, int] | None:
    """``--gateway`` as an address; with one, ``--node`` must be ``https://<node-id>.<domain>``."""
    if text is None:
        return None
    address = parse_gateway(text)
    gateway_domain(node)
    return address


def _client(node: str, session: str, ca: Path, plan_signer: Path | None, insecure: bool = False,
            gateway: str | None = None) -> SessionClient:
    ca_cert, signer = _trust(ca, plan_signer)
    address = _gateway(gateway, node)
    if signer is None and insecure:
        err.print("[yellow]warning:[/yellow] --insecure-skip-plan-verification: the session plan's signature is not "
                  "checked (experiments only)")
    try:
        return SessionClient(node_url=node, session_id=session, ca_certificate=ca_cert, plan_signer=signer,
                             insecure_skip_plan_verification=insecure, gateway=address)
    except ClientError as exc:
        raise _fail(str(_blame_ca(exc, ca))) from None


Replace = Annotated[bool, typer.Option("--replace", help="Replace the input you submitted before (a new signed "
                                                            "version, taken by every node before the session computes)")]
PartSize = Annotated[int | None, typer.Option(
    "--part-size", help="Largest envelope payload in bytes; a larger table is sent in parts (default: what fits "
                        f"one 16 MiB envelope, {DEFAULT_PART_BYTES}); lower it for a proxy with a smaller body limit")]


@app.command()
@_friendly
def submit(session: Session, identity: IdentityFile, node: Node, ca: Ca, data: Path,
           plan_signer: Signer = None, insecure: Insecure = False, namespace: Namespace = None,
           progress: ShowProgress = False, gateway: GatewayAddress = None, replace: Replace = False,
           part_size: PartSize = None) -> None:
    """Validate, secret-share, seal per node and post DATA (a CSV, or a model JSON for model owners).

    The same command again succeeds and changes nothing (and completes a submission that reached only some
    nodes). Other data for an input you submitted before is refused unless --replace: then it replaces yours at
    every node, as long as the session has not started computing. A large table is sent in parts.
    """
    ident = Identity.load(identity)
    session_id = _session_id(session, namespace)
    client = _client(node, session_id, ca, plan_signer, insecure, gateway)
    try:
        with _bars(_progress_console(progress)) as bar:
            if data.suffix == ".json":
                try:
                    params: dict[str, Any] = json.loads(data.read_text())
                except (OSError, ValueError) as exc:
                    raise _fail(f"cannot read model file {data}: {exc}") from None
                sealed = client.seal_model(ident, params, bar, replace=replace)
            else:
                sealed = client.seal_rows(ident, read_csv(data, bar), bar, replace=replace,
                                          part_bytes=DEFAULT_PART_BYTES if part_size is None else part_size)
            parts = len(sealed) // max(1, len({p.plan.node_id for p, _ in sealed}))
            if parts > 1:
                err.print(f"the table goes to each node in {parts} parts", highlight=False)
            posted = 0

            def advance(_node: str) -> None:
                nonlocal posted
                posted += 1
                if bar is not None:
                    bar("posting", posted, len(sealed))

            results = client.post_sealed(sealed, progress=advance)
    except PartialSubmitError as exc:
        raise _fail(f"{'replacing' if replace else 'submitting'} did not reach every node: {exc}") from None
    except ClientError as exc:
        raise _fail(str(_blame_ca(exc, ca))) from None
    finally:
        client.close()
    out.print(submit_summary(results, session_id))


def submit_summary(results: list[dict[str, Any]], session_id: str) -> str:
    """What ``submit`` says when every node holds the input: submitted, replaced (and which version), or
    already held (nothing changed)."""
    by_node: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_node.setdefault(str(r.get("node")), []).append(r)
    nodes = len(by_node)
    again = sum(1 for rs in by_node.values() if all(r.get("alreadyAccepted") for r in rs))
    versions = [r["version"] for r in results if isinstance(r.get("version"), int)]
    version = max(versions) if versions else 1
    if again == nodes:
        return (f"[green]already submitted[/green]: the {nodes} nodes of session {session_id} hold this very input "
                f"(same content, version {version}); nothing changed")
    held = f" ({again} held it already)" if again else ""
    if any(r.get("replaced") is not None for r in results) or version > 1:
        return f"[green]replaced[/green] version {version} at {nodes}/{nodes} nodes of session {session_id}{held}"
    return f"[green]submitted[/green] to {nodes} nodes of session {session_id}{held}"


def _json_text(res: dict[str, Any]) -> str:
    """``res`` as JSON, each non-integral output written as the decimal literal of ``res["display"]``: rounded
    exactly to its declared scale (``127.7633``, never ``127.76333333333334``); ``exact`` keeps the exact values."""
    literals: dict[str, str] = {}

    def mark(value: Any, text: Any) -> Any:
        if isinstance(value, list) and isinstance(text, list):
            return [mark(v, t) for v, t in zip(value, text, strict=True)]
        if isinstance(value, float) and isinstance(text, str):
            token = f"\u0000{len(literals)}\u0000"
            literals[json.dumps(token)] = text
            return token
        return value

    display = res.get("display", {})
    doc = {k: v for k, v in res.items() if k != "display"}
    doc["outputs"] = {k: mark(v, display.get(k)) for k, v in res["outputs"].items()}
    text = json.dumps(doc, indent=2)
    for token, literal in literals.items():
        text = text.replace(token, literal)
    return text


@app.command()
@_friendly
def result(session: Session, identity: IdentityFile, node: Node, ca: Ca, plan_signer: Signer = None,
           as_json: Annotated[bool, typer.Option("--json")] = False,
           wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for the outputs")] = 0.0,
           insecure: Insecure = False, namespace: Namespace = None, progress: ShowProgress = False,
           gateway: GatewayAddress = None) -> None:
    """Collect the sealed result shares, reconstruct, check consistency, print at each output's declared scale."""
    ident = Identity.load(identity)
    session_id = _session_id(session, namespace)
    client = _client(node, session_id, ca, plan_signer, insecure, gateway)
    console = _progress_console(progress)
    try:
        with (console.status(f"waiting up to {wait:g}s for the outputs of session {session_id}")
              if console is not None and wait > 0 else contextlib.nullcontext()):
            res = client.collect_result(ident, wait_s=wait)
    except ClientError as exc:
        if exc.reason == "not_ready" and wait > 0:
            raise _fail(f"timed out after waiting {wait:g}s: {exc}; wait longer (--wait SECONDS), or see why with "
                        "`kubectl get mpcs` / `kubectl describe mpcs NAME`") from None
        if exc.reason == "not_ready":
            raise _fail(f"{exc}; pass --wait SECONDS to wait for them") from None
        raise _fail(str(_blame_ca(exc, ca))) from None
    finally:
        client.close()
    if as_json:
        typer.echo(_json_text(res))
        return
    table = Table(title=f"session {session_id}")
    table.add_column("output")
    table.add_column("value", justify="right")
    labels = res.get("labels", {})
    for name, value in res["outputs"].items():
        text = res.get("display", {}).get(name, value)
        # A histogram's range counts read as what they count: "histogram(amount) above 1000".
        table.add_row(escape(labels.get(name, name)),
                      text if isinstance(text, str) else escape(json.dumps(text).replace('"', "")))
    out.print(table)


def main() -> None:
    """Console-script entry point."""
    app()

