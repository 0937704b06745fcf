"""The data-owner and output-recipient client (httpx), used by the ``pqmpc`` CLI.

Submitting (:meth:`SessionClient.submit_rows`, :meth:`SessionClient.submit_model`):

1. Fetch the signed plan from a node and verify it with the operator's plan-signing
   key when one is given; check the owner is an input owner with this identity.
2. Validate everything locally first — columns, numbers, declared ranges, model
   shapes — so a bad file is refused before anything is sent (nothing half-submitted).
3. For every party: fetch ``/v1/keys`` and verify CA → node certificate → KEM key
   certificate → transparency log, and that the certificate fingerprint is the plan's.
4. Secret-share locally (fixed point, the session's sharing and domain); in malicious
   sessions also key the input (:mod:`pqmpc_node.mpc.inputs`: shares of ``k * x`` and of
   a fresh owner key ``k``) so that no node can alter it undetected. Seal each node's
   shares to its KEM key and sign with the owner's ML-DSA key.
5. Post every envelope, retrying transient failures; a 409 ``replay`` with
   ``alreadyAccepted`` means an earlier attempt landed, so retries are idempotent.
   Every party is tried; when only some took it, :class:`PartialSubmitError` says which,
   and the same submission again completes it.

The envelopes' signed input id carries a version (:meth:`SessionClient.choose_version`,
from what the nodes hold: the same content keeps its version, ``replace=True`` sends
other content as the next version) and, for a table too large for one envelope, the
part number and count (:mod:`pqmpc_node.input_parts`, ``part_bytes``).

Collecting (:meth:`SessionClient.collect_result`): fetch the sealed output of every
party, open each with the recipient's KEM key (sender: the node's certified identity),
refuse unless every party (additive) or t + 1 parties (Shamir) answered, reconstruct,
and verify: in malicious sessions each output's per-output MAC
(:func:`pqmpc_node.mpc.outputs.verify_delivered`), Shamir shares on one polynomial, public
values (valid-row counts) equal across nodes. A result that does not verify is refused
whole.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import decimal
import hashlib
import hmac
import json
import math
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pqmpc_node.crypto.envelopes import (
    MAX_ENVELOPE_BYTES,
    EnvelopeError,
    EnvelopeHeader,
    ReplayGuard,
    key_fingerprint,
    open_envelope,
    seal_envelope,
)
from pqmpc_node.crypto.kemkeys import KemKeyPair, UnknownEpochError, VerifiedKemKey, verify_keys_document
from pqmpc_node.crypto.pki import CertificateError, NodeId, WrongIdentityError, suite_of_ca, verify_node_certificate
from pqmpc_node.crypto.suites import MLDSAPrivateKey, MLDSAPublicKey, Suite, SuiteName, get_suite
from pqmpc_node.crypto.transparency import LogBundle, LogForkError, LogVerifier, require_same_history
from pqmpc_node.gateway.routing import external_name
from pqmpc_node.net.https import peer_certificate, pq_transport
from pqmpc_node.output_scale import output_decimals, rounded_text
from pqmpc_node.input_ids import InputId, InputIdError
from pqmpc_node.input_parts import DEFAULT_PART_BYTES, PART_HEADROOM, split_rows
from pqmpc_node.mpc.config import EngineConfig
from pqmpc_node.mpc.domain import Domain
from pqmpc_node.mpc.numerics import decode_fractions, exact_text
from pqmpc_node.mpc.programs import (
    AggregatePlan,
    delivered_names,
    encode_column,
    encode_model,
    is_histogram_bins,
    model_shapes,
    output_decodings,
    output_labels,
)
from pqmpc_node.mpc.randomness import AesCtrRandom
from pqmpc_node.mpc.inputs import share_owner_input
from pqmpc_node.mpc.outputs import DeliveredShare, OutputForgeryError, verify_delivered
from pqmpc_node.payloads import U64, InputPayload, OutputPayload, PayloadError, domain_for
from pqmpc_node.plan import PlanError, PlanParty, SessionPlan, parse_signed_plan, verify_signed_plan

__all__ = [
    "ClientError",
    "Identity",
    "PartialSubmitError",
    "NodeClient",
    "SessionClient",
    "fetch_verified_keys",
    "gateway_domain",
    "node_http_client",
    "parse_gateway",
    "transport_error",
    "CsvColumns",
    "ProgressFn",
    "read_csv",
    "sniff_delimiter",
]

OUTPUT_KEY_EPOCH = 1


class ClientError(Exception):
    """A refusal the user can act on; ``reason`` is a stable label."""

    def __init__(self, message: str, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason


class PartialSubmitError(ClientError):
    """Some parties took the input and others did not (:meth:`SessionClient.post_sealed`); a re-run completes it."""

    def __init__(self, results: Sequence[Mapping[str, Any]], failed: Mapping[str, ClientError], nodes: int) -> None:
        held = sorted({str(r["node"]) for r in results if r.get("complete") or r.get("alreadyAccepted")})
        why = "; ".join(f"{node}: {exc}" for node, exc in failed.items())
        super().__init__(f"the input is held at {len(held)}/{nodes} nodes ({', '.join(held) or 'none'}); not at "
                         f"{', '.join(failed)}: {why}. Run the same command again to complete it (the nodes that hold "
                         "it answer 'already', the others take it); the session does not compute on a mix",
                         next(iter(failed.values())).reason)
        self.results = list(results)
        self.failed = dict(failed)
        self.held = held


@dataclass(frozen=True)
class Identity:
    """A data owner's / recipient's keys: ML-DSA (signing inputs) and X-Wing (receiving outputs)."""

    name: str
    suite: Suite
    signing_seed: bytes = field(repr=False)
    kem_seed: bytes = field(repr=False)

    @classmethod
    def generate(cls, name: str, suite: SuiteName = SuiteName.PQ_DEFAULT) -> Identity:
        return cls(name, get_suite(suite), os.urandom(32), os.urandom(32))

    @property
    def signing_key(self) -> MLDSAPrivateKey:
        return self.suite.signature.generate(self.signing_seed)

    @property
    def kem(self) -> KemKeyPair:
        return KemKeyPair.from_seed(self.suite.envelope_kem, self.kem_seed)

    def public_document(self) -> dict[str, str]:
        """What goes into the MPCSession: ``inputs[].identity`` and ``outputs[].identity``."""
        return {
            "name": self.name,
            "suite": self.suite.name.value,
            "identity": base64.b64encode(self.signing_key.public_key().public_bytes_raw()).decode(),
            "kemPublicKey": base64.b64encode(self.kem.public_bytes).decode(),
        }

    def save(self, path: Path) -> None:
        """Write the identity (private seeds!) to ``path`` with mode 0600; refuses to overwrite."""
        doc = {"name": self.name, "suite": self.suite.name.value,
               "signingSeed": base64.b64encode(self.signing_seed).decode(),
               "kemSeed": base64.b64encode(self.kem_seed).decode(), **self.public_document()}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)

    @classmethod
    def load(cls, path: Path) -> Identity:
        try:
            doc = json.loads(path.read_text())
            return cls(doc["name"], get_suite(doc["suite"]), base64.b64decode(doc["signingSeed"]),
                       base64.b64decode(doc["kemSeed"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ClientError(f"cannot read identity file {path}: {exc}; create one with `pqmpc identity new`",
                              "bad_identity") from None

    def keypair_for(self, epoch: int, *, now: dt.datetime) -> KemKeyPair:
        """:class:`~pqmpc_node.crypto.envelopes.KemKeySource` for opening outputs."""
        if epoch != OUTPUT_KEY_EPOCH:
            raise UnknownEpochError(f"recipient keys have epoch {OUTPUT_KEY_EPOCH} only, not {epoch}")
        return self.kem


CSV_DELIMITERS = (",", ";", "\t")
"""What :func:`read_csv` recognises: comma, and the semicolon and tab that spreadsheet exports use."""

ProgressFn = Callable[[str, int, int], None]
"""``progress(what, done, total)``: a long step reports how far it got (the CLI draws a bar per ``what``)."""


class CsvColumns(dict[str, list[str]]):
    """The columns of a CSV file by header name, in file order, with how the file was read.

    A plain ``dict`` for every caller; ``header`` (the names as found) and ``delimiter``
    let an error say what was read when it does not match the session.
    """

    def __init__(self, columns: dict[str, list[str]], *, header: list[str], delimiter: str) -> None:
        super().__init__(columns)
        self.header = header
        self.delimiter = delimiter


def sniff_delimiter(header_line: str) -> str:
    """The delimiter among :data:`CSV_DELIMITERS` that splits the header line into the most fields (``,`` on a tie).

    Judged on the header line only: a data line may hold a decimal comma (``1,5`` in a
    ``;`` file), a header of field names does not.
    """
    def fields(delimiter: str) -> int:
        return len(next(csv.reader([header_line], delimiter=delimiter), []))
    return max(CSV_DELIMITERS, key=fields)  # max keeps the first of equals: "," wins ties


def read_csv(path: Path, progress: ProgressFn | None = None) -> CsvColumns:
    """Columns of a CSV file with a header row: UTF-8 (a byte-order mark is dropped, as Excel writes one),
    delimited by ``,``, ``;`` or tab (:func:`sniff_delimiter`).

    ``progress("parsing <file>", bytes_read, file_size)`` is called every few thousand lines.
    """
    what = f"parsing {path.name}"
    try:
        total = path.stat().st_size
        with path.open(newline="", encoding="utf-8-sig") as f:
            header_line = f.readline()
            if not header_line.strip():
                raise ClientError(f"{path} has no header row; the first line must name the columns", "bad_csv")
            delimiter = sniff_delimiter(header_line.rstrip("\r\n"))
            done = len(header_line.encode())

            def lines() -> Iterator[str]:
                nonlocal done
                yield header_line
                for n, line in enumerate(f, start=1):
                    done += len(line)
                    if progress is not None and n % 4096 == 0:
                        progress(what, min(done, total), total)
                    yield line

            reader = csv.reader(lines(), delimiter=delimiter)
            header = [name.strip() for name in next(reader)]
            twice = sorted({name for name in header if header.count(name) > 1})
            if twice:
                raise ClientError(f"{path}: column(s) {twice} appear more than once in the header {header}", "bad_csv")
            cols: dict[str, list[str]] = {name: [] for name in header}
            targets = [cols[name] for name in header]
            for row in reader:
                if not row:
                    continue  # a blank line (a trailing newline in a spreadsheet export)
                for target, value in zip(targets, row):
                    target.append(value.strip())
                for target in targets[len(row):]:
                    target.append("")  # a short row: "" is refused as "not a number" with its line
            if progress is not None:
                progress(what, total, total)
    except UnicodeDecodeError:
        raise ClientError(f"{path} is not UTF-8 text; save it as \"CSV UTF-8\" (Excel: Save As > CSV UTF-8 "
                          "(Comma delimited))", "bad_csv") from None
    except csv.Error as exc:
        raise ClientError(f"{path}: not a readable CSV file: {exc}", "bad_csv") from None
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}", "bad_csv") from None
    return CsvColumns(cols, header=header, delimiter=delimiter)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def node_http_client(
    ca_certificate: x509.Certificate,
    *,
    expected_at: Callable[[str], str | None] = lambda _host: None,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
    timeout: httpx.Timeout = httpx.Timeout(30.0, connect=5.0),
    connect_to: tuple[str, int] | None = None,
) -> httpx.Client:
    """An HTTP client for node APIs: PQ-TLS only, the server must hold a node certificate of the pool CA.

    ``expected_at(host)`` names the node that must answer at ``host`` once the caller
    knows it (from the signed plan); until then any node of the pool passes the
    handshake, and :func:`fetch_verified_keys` binds the certificate to the keys document.

    ``connect_to=(host, port)``: through the pool's SNI gateway. Every connection goes to
    that address; the URL's host (``<node-id>.<domain>``) is the TLS server name the
    gateway routes by, and the node's certificate must name it (DNS SAN) besides being
    the pool's. TLS still ends at the node: the gateway only passes bytes through.
    """
    try:
        suite = suite_of_ca(ca_certificate)
    except CertificateError as exc:
        raise ClientError(str(exc), exc.reason) from None

    def check(cert: x509.Certificate, host: str) -> None:
        node = expected_at(host)
        verified = verify_node_certificate(cert, ca_certificate=ca_certificate, suite=suite, now=clock(),
                                           expected_node_ids=None if node is None else {NodeId(node)}, log=None)
        if connect_to is not None and host.lower() not in {n.lower() for n in verified.dns_names}:
            raise WrongIdentityError(f"node {verified.node_id}'s certificate does not name {host} (it names "
                                     f"{', '.join(verified.dns_names)}): the pool's spec.externalAccess.domain is "
                                     "another, or the node was certified before it was set (it gets the name at "
                                     "its next renewal; delete the pod to re-certify now)")

    return httpx.Client(transport=pq_transport(ca_certificate, suite, verify_peer=check, connect_to=connect_to),
                        timeout=timeout)


def parse_gateway(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) of a pool's gateway Service, or a :class:`ClientError` saying what to pass."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClientError(f"--gateway {text!r} is not HOST:PORT; pass the address of the pool's gateway Service, "
                          "e.g. 203.0.113.7:443 (kubectl get svc <pool>-gateway)", "bad_gateway")
    return host, int(port)


def gateway_domain(node_url: str) -> str:
    """The external domain a gateway URL ``https://<node-id>.<domain>[:port]`` names (ClientError otherwise)."""
    host = (urllib.parse.urlsplit(node_url).hostname or "").rstrip(".").lower()
    label, dot, domain = host.partition(".")
    if not dot or not label or not domain or all(c.isdigit() or c == "." for c in host):
        raise ClientError(f"--node {node_url}: through a gateway, name the node as https://<node-id>.<domain> "
                          "(<domain>: the pool's spec.externalAccess.domain), e.g. "
                          "https://banks-bank-a-eu-0.banks.mpc.example.com", "bad_url")
    return domain


def transport_error(url: str, exc: httpx.HTTPError) -> ClientError:
    """A failed request as a :class:`ClientError`: ``wrong_ca`` when the server's certificate was refused as not
    issued by the CA the client trusts (:mod:`pqmpc_node.net.https` names the reason in the handshake error),
    else ``unreachable``."""
    reason = "wrong_ca" if "refused the server certificate (wrong_ca)" in str(exc) else "unreachable"
    return ClientError(f"{url}: {exc}", reason)


def _origin(url: str) -> tuple[str, int]:
    """``(host, port)`` of an https URL, lower-case, default port filled in: two spellings of one node compare equal."""
    parts = urllib.parse.urlsplit(url)
    return (parts.hostname or "").rstrip(".").lower(), parts.port or 443


def _require_https(url: str) -> None:
    if not url.startswith("https://"):
        raise ClientError(f"{url}: node URLs are https:// (the node API speaks post-quantum TLS only; metrics and "
                          "probes are on the separate metrics port)", "bad_url")


class NodeClient:
    """HTTP calls to one node's API (timeouts on; errors become :class:`ClientError`)."""

    def __init__(self, base_url: str, *, http: httpx.Client) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self.http.request(method, self.base_url + path, **kw)
        except httpx.HTTPError as exc:
            raise transport_error(self.base_url, exc) from None
        return r

    @staticmethod
    def _error(r: httpx.Response) -> ClientError:
        try:
            err = r.json()["error"]
            return ClientError(f"{r.request.url}: {err['message']}", err["reason"])
        except (ValueError, KeyError, TypeError):
            return ClientError(f"{r.request.url}: HTTP {r.status_code}", f"http_{r.status_code}")

    def get_json(self, path: str) -> Any:
        return self.get_json_with_peer(path)[0]

    def get_json_with_peer(self, path: str) -> tuple[Any, x509.Certificate | None]:
        """The JSON answer and the TLS certificate the server presented (None without PQ-TLS)."""
        r = self._call("GET", path)
        if r.status_code != 200:
            raise self._error(r)
        try:
            return r.json(), peer_certificate(r)
        except ValueError:
            raise ClientError(f"{r.request.url}: the answer is not JSON", "malformed") from None

    def get_bytes(self, path: str, params: Mapping[str, str] | None = None) -> bytes:
        r = self._call("GET", path, params=params)
        if r.status_code != 200:
            raise self._error(r)
        return r.content

    def post_input(self, session_id: str, envelope: bytes) -> httpx.Response:
        return self._call("POST", f"/v1/sessions/{session_id}/inputs", content=envelope,
                          headers={"Content-Type": "application/octet-stream"})


@dataclass(frozen=True)
class _Party:
    plan: PlanParty
    client: NodeClient
    kem: VerifiedKemKey
    identity_key: MLDSAPublicKey
    log_chain: tuple[bytes, ...] = ()
    """The entry hashes of the (verified) log this node served."""


class LogHistory:
    """The transparency-log history this machine has seen for one pool CA, kept across runs.

    Stored as the chain of entry hashes in ``<config dir>/transparency/<CA fingerprint>.json``
    (config dir: ``$PQMPC_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/pqmpc``, else
    ``~/.config/pqmpc``). Every node's view must share history with it
    (:func:`~pqmpc_node.crypto.transparency.require_same_history`), so a forked log is
    caught even when the two forks are shown to this machine on different days.
    """

    def __init__(self, ca_certificate: x509.Certificate, directory: Path | None = None) -> None:
        fingerprint = hashlib.sha256(ca_certificate.public_bytes(Encoding.DER)).hexdigest()[:32]
        base = directory or _config_dir()
        self.path = base / "transparency" / f"{fingerprint}.json"
        self.chain: tuple[bytes, ...] = ()
        try:
            doc = json.loads(self.path.read_text())
            self.chain = tuple(bytes.fromhex(h) for h in doc["entryHashes"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ClientError(f"the stored log history {self.path} is unreadable ({exc}); move it away to start "
                              "over (you lose fork detection against what it recorded)", "bad_history") from None

    def observe(self, node_id: str, chain: tuple[bytes, ...]) -> None:
        """Check ``chain`` against the history and remember the longer one; ClientError ``log_fork`` on a fork."""
        try:
            merged = require_same_history(self.chain, chain, what=f"node {node_id}")
        except LogForkError as exc:
            raise ClientError(str(exc), exc.reason) from None
        if merged != self.chain:
            self.chain = merged
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"entryHashes": [h.hex() for h in merged]}))
            tmp.replace(self.path)


def _config_dir() -> Path:
    if os.environ.get("PQMPC_CONFIG_DIR"):
        return Path(os.environ["PQMPC_CONFIG_DIR"])
    if os.environ.get("XDG_CONFIG_HOME"):
        return Path(os.environ["XDG_CONFIG_HOME"]) / "pqmpc"
    return Path.home() / ".config" / "pqmpc"


def fetch_verified_keys(
    client: NodeClient, party: PlanParty, *, ca_certificate: x509.Certificate, suite: Suite, now: dt.datetime,
    require_tls: bool = True,
) -> _Party:
    """``GET /v1/keys`` of one node, verified: CA → certificate (the plan's fingerprint) → KEM key → log.

    Over PQ-TLS the certificate the node presented in the handshake must be the one its
    keys document names: whoever answers at the address is the node the plan names.
    ``require_tls=False`` only for callers that bring their own transport (tests).
    """
    doc, tls_cert = client.get_json_with_peer("/v1/keys")
    try:
        bundle = LogBundle.from_json(doc["log"])
        verifier = LogVerifier(ca_certificate.public_key())  # type: ignore[arg-type]
        verifier.update(bundle.entries, bundle.tree_head)
        keys = verify_keys_document(doc, node_id=NodeId(party.node_id), ca_certificate=ca_certificate, suite=suite,
                                    log=verifier, now=now, fingerprint=party.cert_fingerprint)
    except CertificateError as exc:
        raise ClientError(f"keys of node {party.node_id} do not verify: {exc}", getattr(exc, "reason", "bad_keys")) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ClientError(f"keys document of node {party.node_id} is malformed: {exc}", "bad_keys") from None
    kem, node = keys.kem, keys.node
    if tls_cert is None and require_tls:
        raise ClientError(f"{client.base_url} answered without a PQ-TLS server certificate; refusing its keys",
                          "no_tls")
    if tls_cert is not None and tls_cert.public_bytes(Encoding.DER) != node.certificate.public_bytes(Encoding.DER):
        raise ClientError(f"the server at {client.base_url} holds another certificate than node {party.node_id}'s keys "
                          "document names; refusing it", "wrong_identity")
    chain = tuple(e.entry_hash for e in bundle.entries)
    return _Party(party, client, kem, node.public_key, chain)


@dataclass(frozen=True)
class _InputDerivation:
    """What an owner's input derives from its content, keyed with the owner's secret seed.

    * ``tag`` (in the signed input id ``input/<owner>/<tag>/v<N>[/part-<i>-of-<k>]``,
      :class:`~pqmpc_node.input_ids.InputId`): an HMAC of the session id and the validated
      content under a key only the owner holds, so a node can tell "the same content
      again" (a re-run of the same ``pqmpc submit``: idempotent, reported as already
      accepted) from "other content" (refused, unless it is a replacement: a higher
      version), and learns nothing about the data (no guessable hash of a small table).
    * the sharing randomness: a PRF of the owner's secret, the session's terms and the
      content, so re-sealing the same content gives every node the *same* shares as
      before. A re-run after one node accepted and another failed therefore completes
      with shares of one sharing, never a mix of two. Other content, or other terms
      (parties, program), gets independent randomness.
    """

    owner: str
    tag: str
    sharing_key: bytes = field(repr=False)

    def id_of(self, version: int, part: int = 1, parts: int = 1) -> InputId:
        """The signed id of this content as version ``version``, part ``part`` of ``parts``."""
        return InputId(self.owner, self.tag, version, part, parts)

    @classmethod
    def of(cls, identity: Identity, plan: SessionPlan, kind: str,
           arrays: Mapping[str, np.ndarray[Any, Any]]) -> _InputDerivation:
        content = hashlib.sha256(kind.encode())
        for name in sorted(arrays):
            a = np.ascontiguousarray(arrays[name], dtype=np.float64)
            content.update(f"\x00{name}\x00{list(a.shape)}\x00".encode())
            content.update(a.tobytes())
        owner_key = hmac.new(identity.signing_seed, b"pqmpc input derivation v1", hashlib.sha256).digest()
        tag = hmac.new(owner_key, b"tag\x00" + plan.session_id.encode() + b"\x00" + content.digest(),
                       hashlib.sha256).hexdigest()[:32]
        sharing = hmac.new(owner_key, b"sharing\x00" + plan.session_id.encode() + b"\x00" +
                           plan.terms_digest().encode() + b"\x00" + content.digest(), hashlib.sha256).digest()
        return cls(identity.name, tag, sharing)

    def sharing_random(self) -> AesCtrRandom:
        return AesCtrRandom(self.sharing_key)


class SessionClient:
    """Submit inputs to and collect outputs from one session."""

    def __init__(
        self,
        *,
        node_url: str,
        session_id: str,
        ca_certificate: x509.Certificate,
        plan_signer: MLDSAPublicKey | None,
        http: httpx.Client | None = None,
        clock: Callable[[], dt.datetime] = _now,
        url_of: Callable[[PlanParty], str] | None = None,
        insecure_skip_plan_verification: bool = False,
        history_dir: Path | None = None,
        gateway: tuple[str, int] | None = None,
    ) -> None:
        """``gateway=(host, port)``: reach every party through the pool's SNI gateway, each as
        ``https://<node-id>.<domain>`` with the domain of ``node_url`` (:func:`node_http_client`)."""
        if plan_signer is None and not insecure_skip_plan_verification:
            raise ClientError("the session plan must be verified: pass the operator's plan-signing key (--plan-signer, "
                              "the plan-signer.pub of the pool's <pool>-trust ConfigMap); only for experiments, "
                              "--insecure-skip-plan-verification skips it", "plan_signer_required")
        self._own_http = http is None
        self._expected_at: dict[str, str] = {}
        if http is None:
            _require_https(node_url)
        self.gateway = gateway
        domain = gateway_domain(node_url) if gateway is not None else None
        self.http = http or node_http_client(ca_certificate, expected_at=self._expected_at.get, clock=clock,
                                             connect_to=gateway)
        self.session_id = session_id
        self.ca = ca_certificate
        self.clock = clock
        if domain is not None:
            port = urllib.parse.urlsplit(node_url).port or 443
            self.url_of = url_of or (lambda p: f"https://{external_name(p.node_id, domain)}:{port}")
        else:
            self.url_of = url_of or (lambda p: f"https://{p.address}:{p.api_port}")
        self.history = LogHistory(ca_certificate, history_dir)
        entry = NodeClient(node_url, http=self.http)
        try:
            body = entry.get_bytes(f"/v1/sessions/{session_id}/plan")
        except ClientError as exc:
            self.close()
            if exc.reason == "unknown_session":
                raise ClientError(
                    f"{node_url} holds no session {session_id!r}. --session takes the session id, not the MPCSession "
                    f"name: kubectl get mpcs NAME -n NAMESPACE -o jsonpath='{{.status.sessionId}}' (it looks like "
                    "<namespace>.<name>.<hash>); the session's nodes are in .status.result.nodes", exc.reason) from None
            raise
        try:
            if plan_signer is None:
                self.plan = parse_signed_plan(body)[2]
            else:
                self.plan = self._verify_plan(body, plan_signer)
        except PlanError as exc:
            self.close()
            raise ClientError(f"the session plan is not acceptable: {exc}", exc.reason) from None
        # From here on, the node at each party's address must be that party; a connection
        # opened before the plan was known is not reused.
        if domain is not None:
            self._expected_at.update({external_name(p.node_id, domain): p.node_id for p in self.plan.parties})
            if _origin(node_url)[0] not in self._expected_at:
                self.close()
                raise ClientError(f"--node {node_url} is no party of session {session_id}; its parties are "
                                  f"{', '.join(self.url_of(p) for p in self.plan.parties)}", "not_a_party")
        else:
            self._expected_at.update({p.address: p.node_id for p in self.plan.parties})
        if self._own_http:
            self.http.close()
            self.http = node_http_client(ca_certificate, expected_at=self._expected_at.get, clock=clock,
                                         connect_to=gateway)
        try:
            self._bind_plan(node_url)
        except ClientError:
            self.close()
            raise
        self.suite = get_suite(self.plan.suite)  # signed into the plan: every algorithm follows from it
        self.domain_name = domain_for(self.plan.sharing, self.plan.security)
        self._parties: list[_Party] | None = None
        self.phases: dict[str, str] = {}
        """Each reachable party's session phase, as :meth:`held_inputs` last read it."""

    def close(self) -> None:
        """Close the HTTP connections this client opened."""
        if self._own_http:
            self.http.close()

    def __enter__(self) -> SessionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _bind_plan(self, entry_url: str) -> None:
        """The plan is this session's, and a second party holds the very same plan (digest and generation).

        A node could otherwise serve a validly signed plan of another session, or an
        older generation of this one (other parties, other keys); one node's word is not
        enough, so the plan is fetched again from a party other than the entry node.
        """
        if self.plan.session_id != self.session_id:
            raise ClientError(f"the node served the plan of session {self.plan.session_id!r}, not {self.session_id!r}",
                              "wrong_session")
        others = [p for p in self.plan.parties if _origin(self.url_of(p)) != _origin(entry_url)]
        for party in others:
            try:
                body = NodeClient(self.url_of(party), http=self.http).get_bytes(f"/v1/sessions/{self.session_id}/plan")
            except ClientError as exc:
                if exc.reason == "unreachable":
                    continue  # try the next party
                raise
            try:
                other = parse_signed_plan(body)[2]
            except PlanError as exc:
                raise ClientError(f"party {party.node_id} serves a plan that does not parse: {exc}", exc.reason) from None
            if (other.digest(), other.generation) != (self.plan.digest(), self.plan.generation):
                raise ClientError(
                    f"party {party.node_id} holds plan {other.digest()[:12]} (generation {other.generation}) but the "
                    f"entry node served {self.plan.digest()[:12]} (generation {self.plan.generation}): the parties "
                    "disagree on the session, so nothing is submitted; retry once the operator has re-planned",
                    "plans_disagree")
            return
        raise ClientError("no second party could be reached to confirm the session plan; retry when the nodes are "
                          "reachable", "unreachable")

    def _verify_plan(self, body: bytes, signer: MLDSAPublicKey) -> SessionPlan:
        plan = parse_signed_plan(body)[2]
        return verify_signed_plan(body, signer_key=signer, pool=plan.pool, node_id=plan.parties[0].node_id,
                                  now=self.clock())

    # -- keys -------------------------------------------------------------------------

    def verify_node(self, party: PlanParty) -> _Party:
        """Fetch and verify one party's keys against the CA, the log, the plan and the log history seen so far."""
        verified = fetch_verified_keys(NodeClient(self.url_of(party), http=self.http), party, ca_certificate=self.ca,
                                       suite=self.suite, now=self.clock(), require_tls=self._own_http)
        self.history.observe(party.node_id, verified.log_chain)
        return verified

    def parties(self) -> list[_Party]:
        if self._parties is None:
            self._parties = [self.verify_node(p) for p in self.plan.parties]
        return self._parties

    # -- submitting -------------------------------------------------------------------

    def _domain(self) -> Domain:
        return self._engine().domain()

    def _engine(self) -> EngineConfig:
        p = self.plan
        return EngineConfig(parties=len(p.parties), threshold=p.threshold if p.sharing == "shamir" else 1,
                            sharing=p.sharing, security=p.security, frac_bits=p.frac_bits, backend="numpy")

    def _owner(self, identity: Identity, role: str) -> None:
        try:
            entry = self.plan.input_of(identity.name)
        except KeyError:
            raise ClientError(f"{identity.name!r} is not an input owner of session {self.session_id}",
                              "not_an_owner") from None
        if entry.role != role:
            raise ClientError(f"{identity.name!r} supplies {entry.role} input in this session, not {role}", "wrong_role")
        self._same_suite(identity)
        if entry.identity != identity.signing_key.public_key().public_bytes_raw():
            raise ClientError(f"the identity file's key is not the key the session registered for {identity.name!r}",
                              "wrong_key")

    def _same_suite(self, identity: Identity) -> None:
        if identity.suite.name is not self.suite.name:
            raise ClientError(f"the identity {identity.name!r} is a {identity.suite.name.value} identity, but session "
                              f"{self.session_id} runs suite {self.suite.name.value}; create one with `pqmpc identity "
                              f"new --suite {self.suite.name.value}`", "wrong_suite")

    def validate_rows(self, columns: Mapping[str, Sequence[str]],
                      progress: ProgressFn | None = None) -> dict[str, np.ndarray[Any, np.dtype[np.float64]]]:
        """Check the CSV against the declared fields, ranges and resolutions; all errors before anything is sent.

        In an aggregate session a value with more decimals than its field's resolution is
        refused rather than rounded: the results are exact in those units, so silently
        rounding would change the answer. A header that does not match the declared
        fields is refused naming the header found (and how it was split) and the fields
        expected, so a wrong delimiter or file shows at once.
        """
        compiled = self.plan.execution_plan()
        numerics = compiled.numerics if isinstance(compiled, AggregatePlan) else {}
        out: dict[str, np.ndarray[Any, np.dtype[np.float64]]] = {}
        declared = [x.name for x in self.plan.data_fields()]
        found = _header_text(columns)
        extra = sorted(set(columns) - set(declared))
        missing = [name for name in declared if name not in columns]
        if missing:
            raise ClientError(f"column(s) {missing} are missing: the header found is {found}, session "
                              f"{self.session_id} declares the fields {declared}; name the columns exactly so",
                              "missing_column")
        if extra:
            # Refused, not ignored: an extra column usually means the wrong file.
            raise ClientError(f"column(s) {extra} are not fields of session {self.session_id}: the header found is "
                              f"{found}, the session declares {declared}; remove them, or check that this is the "
                              "file you meant to submit", "unknown_column")
        total = sum(len(columns[name]) for name in declared)
        done = 0
        for f in self.plan.data_fields():
            values = []
            for row, raw in enumerate(columns[f.name], start=2):
                try:
                    v = float(raw)
                except ValueError:
                    hint = " (write decimals with a point: 1.5, not 1,5)" if "," in raw else ""
                    raise ClientError(f"line {row}, column {f.name!r}: {raw!r} is not a number{hint}",
                                      "not_a_number") from None
                if not math.isfinite(v) or not f.min <= v <= f.max:
                    raise ClientError(f"line {row}, column {f.name!r}: {raw} is outside the declared range "
                                      f"[{f.min:g}, {f.max:g}]", "out_of_range")
                if f.name in numerics and _decimals_of(raw) > numerics[f.name].decimals:
                    d = numerics[f.name].decimals
                    raise ClientError(f"line {row}, column {f.name!r}: {raw.strip()} has more decimals than the field's "
                                      f"{d} (results are exact in units of 10^-{d}); round the value, or ask for a "
                                      "session that declares more decimals for this field", "too_many_decimals")
                values.append(v)
                done += 1
                if progress is not None and done % 8192 == 0:
                    progress("checking values", done, total)
            out[f.name] = np.asarray(values, dtype=np.float64)
        if progress is not None:
            progress("checking values", total, total)
        lengths = {len(v) for v in out.values()}
        if lengths == {0}:
            raise ClientError("the CSV has no data rows", "empty")
        return out

    def _share(self, arrays: Mapping[str, np.ndarray[Any, Any]], rng: AesCtrRandom, model: bool = False
               ) -> list[tuple[dict[str, U64], dict[str, U64] | None, U64 | None]]:
        """Per party: shares of each array, and in malicious sessions the tags and key share.

        Columns are encoded as the compiled program says (units of each field's decimals,
        or fixed point for models); all arrays are keyed together under one owner key
        (:mod:`pqmpc_node.mpc.inputs`). ``rng`` is :meth:`_InputDerivation.sharing_random`.
        """
        domain = self._domain()
        names = list(arrays)
        plan = self.plan.execution_plan()
        encode = encode_model if model else encode_column
        try:
            encoded = [encode(plan, k, arrays[k], domain).reshape(-1) for k in names]
        except ValueError as exc:
            raise ClientError(str(exc), "out_of_range") from None
        bounds = np.cumsum([0, *(int(e.size) for e in encoded)])
        per_party = share_owner_input(domain, self._engine().scheme(), np.concatenate(encoded), rng,
                                      keyed=self.plan.security == "malicious")

        def split(flat: Any) -> dict[str, U64]:
            host = np.asarray(flat, dtype=np.uint64)
            return {k: host[bounds[i]:bounds[i + 1]].reshape(arrays[k].shape) for i, k in enumerate(names)}

        return [(split(x), None if t is None else split(t), None if k is None else np.asarray(k, dtype=np.uint64))
                for x, t, k in per_party]

    def _seal(self, identity: Identity, party: _Party, payload: bytes, input_id: str | None = None) -> bytes:
        """Seal ``payload`` to ``party`` as ``identity``'s input ``input_id`` (:class:`_InputDerivation`; an
        untagged ``input/<owner>`` when left out, which a node can never take for a re-run)."""
        if len(payload) > MAX_ENVELOPE_BYTES - PART_HEADROOM:
            raise ClientError(f"the share for node {party.plan.node_id} is {len(payload) / 2**20:.1f} MiB; one input "
                              f"envelope holds at most {MAX_ENVELOPE_BYTES >> 20} MiB and only a table is sent in "
                              "parts: ask for a session with a smaller model", "too_large")
        header = EnvelopeHeader(
            suite=self.suite.name, session_id=self.session_id, node_id=party.plan.node_id,
            party_index=party.plan.index, input_id=input_id or f"input/{identity.name}", key_epoch=party.kem.epoch,
            sender=identity.name, sender_key_fingerprint=key_fingerprint(identity.signing_key.public_key()),
            plan_digest=self.plan.binding()[0], generation=self.plan.generation,
        )
        return seal_envelope(payload, suite=self.suite, header=header, recipient_key=party.kem.public_key,
                             sender_key=identity.signing_key)

    def submit_rows(self, identity: Identity, columns: Mapping[str, Sequence[str]],
                    progress: Callable[[str], None] | None = None, *, replace: bool = False) -> list[dict[str, Any]]:
        """Validate, share, seal and post a table (see the module docstring)."""
        return self.post_sealed(self.seal_rows(identity, columns, replace=replace), progress)

    def seal_rows(self, identity: Identity, columns: Mapping[str, Sequence[str]],
                  progress: ProgressFn | None = None, *, replace: bool = False,
                  part_bytes: int = DEFAULT_PART_BYTES) -> list[tuple[_Party, bytes]]:
        """Validate, share and seal a table: its envelopes for every party, nothing sent yet.

        A node's share larger than ``part_bytes`` (default: what fits one envelope,
        :data:`~pqmpc_node.input_parts.DEFAULT_PART_BYTES`; lower it for a proxy with a
        smaller body limit, or in tests) is split into parts of at most that many bytes,
        each sealed with its index and the part count in its signed input id; every
        party gets the same parts (rows in order). ``replace``: see :meth:`choose_version`.
        ``progress`` hears ``checking values`` (per value), ``secret-sharing`` and
        ``sealing`` (per envelope).
        """
        self._owner(identity, "data")
        if not 1024 <= part_bytes <= DEFAULT_PART_BYTES:
            raise ClientError(f"the part size must be 1024..{DEFAULT_PART_BYTES} bytes, got {part_bytes}", "bad_part_size")
        values = self.validate_rows(columns, progress)
        names = [f.name for f in self.plan.data_fields()]
        rows = len(values[names[0]])
        if rows > self.plan.max_rows_per_owner:
            raise ClientError(f"the table has {rows} rows; the session accepts at most {self.plan.max_rows_per_owner} "
                              "per owner (spec.maxRowsPerOwner): split the data or ask for a session with a larger "
                              "maxRowsPerOwner", "too_many_rows")
        arrays = {f: values[f] for f in names}
        derived = _InputDerivation.of(identity, self.plan, "rows", arrays)
        if progress is not None:
            progress("secret-sharing", 0, 1)
        shared = self._share(arrays, derived.sharing_random())
        if progress is not None:
            progress("secret-sharing", 1, 1)
        per_party = [split_rows(InputPayload("rows", self.domain_name, cols, {}, rows, tags, key), part_bytes)
                     for cols, tags, key in shared]
        version = self.choose_version(identity, derived.tag, replace=replace, parts=len(per_party[0]))
        return self._seal_all(identity, [[p.encode() for p in parts] for parts in per_party], derived, version,
                              progress)

    def _seal_all(self, identity: Identity, payloads: Sequence[Sequence[bytes]], derived: _InputDerivation,
                  version: int, progress: ProgressFn | None) -> list[tuple[_Party, bytes]]:
        """Seal every party's parts (``payloads[party index]``, in part order) as ``version`` of ``derived``."""
        parties = self.parties()
        total = sum(len(payloads[p.plan.index]) for p in parties)
        sealed = []
        for p in parties:
            parts = payloads[p.plan.index]
            for i, payload in enumerate(parts, start=1):
                sealed.append((p, self._seal(identity, p, payload, derived.id_of(version, i, len(parts)).text())))
                if progress is not None:
                    progress("sealing", len(sealed), total)
        return sealed

    def submit_model(self, identity: Identity, params: Mapping[str, Any],
                     progress: Callable[[str], None] | None = None, *, replace: bool = False) -> list[dict[str, Any]]:
        """Validate, share, seal and post the model parameters of a linearScore / mlp session."""
        return self.post_sealed(self.seal_model(identity, params, replace=replace), progress)

    def seal_model(self, identity: Identity, params: Mapping[str, Any],
                   progress: ProgressFn | None = None, *, replace: bool = False) -> list[tuple[_Party, bytes]]:
        """Validate, share and seal model parameters: one envelope per party, nothing sent yet."""
        self._owner(identity, "model")
        shapes = model_shapes(self.plan.execution_plan())
        arrays: dict[str, np.ndarray[Any, Any]] = {}
        for name, shape in shapes.items():
            if name not in params:
                raise ClientError(f"model parameter {name!r} is missing; the session needs {sorted(shapes)}", "missing_column")
            a = np.asarray(params[name], dtype=np.float64)
            if a.shape != shape:
                raise ClientError(f"model parameter {name!r} has shape {list(a.shape)}, the session needs {list(shape)}",
                                  "bad_shape")
            arrays[name] = a
        derived = _InputDerivation.of(identity, self.plan, "model", arrays)
        payloads = [[InputPayload("model", self.domain_name, {}, params_i, 0, tags, key).encode()]
                    for params_i, tags, key in self._share(arrays, derived.sharing_random(), model=True)]
        version = self.choose_version(identity, derived.tag, replace=replace, parts=1)
        return self._seal_all(identity, payloads, derived, version, progress)

    # -- versions -----------------------------------------------------------------------

    def held_inputs(self, owner: str) -> dict[str, list[tuple[InputId, int]]]:
        """What each reachable party holds of ``owner``'s input: node id -> [(input id, parts)], the held version
        (parts 1) and a version still arriving in parts. From each node's session status."""
        found: dict[str, list[tuple[InputId, int]]] = {}
        self.phases = {}
        for party in self.parties():
            try:
                status = party.client.get_json(f"/v1/sessions/{self.session_id}")
            except ClientError:
                continue  # unreachable now: its post will say so
            if isinstance(status, dict) and isinstance(status.get("phase"), str):
                self.phases[party.plan.node_id] = status["phase"]
            ids: list[tuple[InputId, int]] = []
            for entry in status.get("inputs", []) if isinstance(status, dict) else []:
                if not isinstance(entry, dict) or entry.get("owner") != owner:
                    continue
                arriving = entry.get("arriving")
                for text, parts in ((entry.get("inputId"), 1),
                                    *(((arriving.get("inputId"), arriving.get("parts")),) if isinstance(arriving, dict)
                                      else ())):
                    if isinstance(text, str) and isinstance(parts, int):
                        try:
                            ids.append((InputId.parse(text, owner), parts))
                        except InputIdError:
                            continue
            found[party.plan.node_id] = ids
        return found

    def choose_version(self, identity: Identity, tag: str, *, replace: bool, parts: int) -> int:
        """The version to seal this content as, from what the parties hold of this owner (:meth:`held_inputs`).

        The same content already held (at any party, even in part) keeps its version, so a
        re-run completes it; content other than what a party holds needs a version above
        every version held (a replacement) and is refused here unless ``replace``: the
        nodes would refuse it anyway, and nothing is sent. Nothing held: version 1.
        """
        ours, others, resplit = 0, 0, 0
        other_at: list[str] = []
        for node, ids in self.held_inputs(identity.name).items():
            for held, held_parts in ids:
                if held.tag == tag and held_parts in (1, parts):
                    ours = max(ours, held.version)
                elif held.tag == tag:  # this content arriving in another number of parts (another --part-size)
                    resplit = max(resplit, held.version)
                else:
                    others = max(others, held.version)
                    other_at.append(f"{node} (version {held.version})")
        others_or_resplit = max(others, resplit)
        closed = {node: phase for node, phase in self.phases.items() if phase != "AwaitingInputs"}
        if others and closed:
            node, phase = next(iter(closed.items()))
            raise ClientError(f"session {self.session_id} is {phase} at {node}; inputs are closed: an input can be "
                              "replaced only while the session awaits inputs", "inputs_closed")
        if others and not replace:
            raise ClientError(f"{identity.name!r} already delivered a different input to session {self.session_id} "
                              f"(held at {', '.join(other_at)}); to replace it with this data, run the same `pqmpc "
                              "submit` with --replace (it is replaced at every node before the session computes)",
                              "duplicate_input")
        return ours if ours > others_or_resplit else others_or_resplit + 1

    # -- posting ------------------------------------------------------------------------

    def post_sealed(self, sealed: Sequence[tuple[_Party, bytes]],
                    progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
        """Post sealed envelopes (a party's parts in order), retrying idempotently; every party is tried.

        Returns each envelope's answer (``node``: which party). When some party did not
        take its envelopes, raises :class:`PartialSubmitError` listing which did and why
        the others did not: a re-run of the same submission completes it (the parties that
        hold it answer ``alreadyAccepted``).
        """
        results: list[dict[str, Any]] = []
        failed: dict[str, ClientError] = {}
        for party, env in sealed:
            node = party.plan.node_id
            if node not in failed:
                try:
                    results.append({**self._post_with_retry(party, env), "node": node})
                except ClientError as exc:
                    failed[node] = exc
            if progress is not None:
                progress(node)
        if failed:
            raise PartialSubmitError(results, failed, len({p.plan.node_id for p, _ in sealed}))
        return results

    def _post_with_retry(self, party: _Party, envelope: bytes, attempts: int = 6) -> dict[str, Any]:
        delay = 0.2
        for attempt in range(attempts):
            try:
                r = party.client.post_input(self.session_id, envelope)
            except ClientError:
                if attempt == attempts - 1:
                    raise
                time.sleep(delay)
                delay *= 2
                continue
            if r.status_code == 202:
                return dict(r.json())
            err = NodeClient._error(r)
            try:
                body = r.json()["error"]
                already = bool(body.get("alreadyAccepted"))
                version = body.get("version")
            except (ValueError, KeyError, TypeError, AttributeError):
                already, version = False, None
            if r.status_code == 409 and already:
                return {"owner": "", "accepted": True, "alreadyAccepted": True, "node": party.plan.node_id,
                        "version": version, "complete": True}
            if r.status_code >= 500 and attempt < attempts - 1:  # 503 inputs_busy: the parties are committing
                time.sleep(delay)
                delay *= 2
                continue
            raise err
        raise ClientError("unreachable", "unreachable")  # pragma: no cover - loop always returns or raises

    # -- results ----------------------------------------------------------------------

    def collect_result(self, identity: Identity, *, wait_s: float = 0.0) -> dict[str, Any]:
        """Fetch, open, reconstruct and cross-check the outputs allowed to ``identity``."""
        try:
            out = self.plan.output_of(identity.name)
        except KeyError:
            raise ClientError(f"{identity.name!r} is not an output recipient of session {self.session_id}",
                              "not_a_recipient") from None
        self._same_suite(identity)
        if out.kem_public_key != identity.kem.public_bytes:
            raise ClientError(f"the identity file's KEM key is not the key registered for {identity.name!r}", "wrong_key")
        opened: dict[int, OutputPayload] = {}
        errors: list[str] = []
        deadline = time.monotonic() + wait_s
        for party in self._reachable_parties():
            while True:
                try:
                    sealed = party.client.get_bytes(f"/v1/sessions/{self.session_id}/outputs",
                                                    params={"recipient": identity.name})
                    break
                except ClientError as exc:
                    if exc.reason == "not_ready" and time.monotonic() < deadline:
                        time.sleep(0.2)
                        continue
                    if exc.reason in ("not_a_recipient", "session_failed", "not_ready"):
                        raise
                    errors.append(f"{party.plan.node_id}: {exc}")
                    sealed = b""
                    break
            if not sealed:
                continue
            try:
                env = open_envelope(sealed, suite=self.suite, session_id=self.session_id, plan=self.plan.binding(),
                                    node_id=identity.name,
                                    party_index=party.plan.index, senders={party.plan.node_id: party.identity_key},
                                    keys=identity, replay_guard=ReplayGuard(), now=self.clock())
                opened[party.plan.index] = OutputPayload.decode(env.plaintext)
            except (EnvelopeError, PayloadError) as exc:
                raise ClientError(f"output from {party.plan.node_id} does not open: {exc}",
                                  getattr(exc, "reason", "bad_output")) from None
        return self._reconstruct(opened, out.allow, errors)

    def _reachable_parties(self) -> list[_Party]:
        """Every party whose keys verify, for collecting outputs; the caller decides if enough remain.

        Left out: a party that does not answer, and one whose pod was replaced (a valid,
        logged certificate of the same node name but not the plan's: the node that
        computed is gone, and its successor holds no share). Anything else that does not
        verify refuses the result. Inputs are never sealed to such a party.
        """
        found = []
        for p in self.plan.parties:
            try:
                found.append(self.verify_node(p))
            except ClientError as exc:
                if exc.reason not in ("unreachable", "wrong_identity"):
                    raise
        return found

    def _verified(self, name: str, holders: Mapping[int, Any], domain: Any, scheme: Any, *,
                  authenticated: bool) -> Any:
        """One output's shares, of the plan's kind, verified and reconstructed (or :class:`ClientError`)."""
        # The kind comes from the plan, never from a node: a node claiming "fixed" for a
        # histogram would make its counts decode scaled down.
        want_kind = "integer" if name.startswith("histogram(") else "fixed"
        if any(s.kind != want_kind for s in holders.values()):
            raise ClientError(f"a node delivered {name!r} as another kind than the plan's ({want_kind}): "
                              "inconsistent outputs", "inconsistent")
        # As received (the payload refused words >= p): never reduced, so nothing non-canonical hides.
        shares = {i: DeliveredShare(s.values, s.key, s.tag) for i, s in holders.items()}
        try:
            return verify_delivered(domain, scheme, shares, authenticated=authenticated)
        except OutputForgeryError as exc:
            raise ClientError(f"the result {name!r} does not verify, refused: {exc}", "forged_output") from None

    def _reconstruct(self, opened: Mapping[int, OutputPayload], allow: Sequence[str], errors: list[str]) -> dict[str, Any]:
        """Verify and reconstruct: every party (additive) or t + 1 (Shamir) must have answered.

        Each output is checked with its per-output MAC key in malicious sessions
        (:func:`~pqmpc_node.mpc.outputs.verify_delivered`); public values (valid-row
        counts) must agree across nodes. Any failure refuses the whole result.

        ``outputs`` holds numbers (an ``int`` when the exact value is integral, else the
        nearest float); ``display`` holds each value rounded (half to even) to the output's
        declared scale (:func:`output_decimals`) as decimal text (``"233.28"``: what the CLI
        prints, never float noise) and ``decimals`` the places used; ``exact``
        holds, for every non-integral aggregate output, its exact value as text (a
        terminating decimal such as ``"2309.1583"``, or ``"p/q"``), since a float carries
        only 53 bits. An allowed ``histogram(f)`` brings ``histogram(f).below`` and
        ``.above`` (the valid rows outside its edges, :func:`delivered_names`); ``labels``
        says what they count (``"histogram(f) below 0"``, :func:`output_labels`).
        """
        scheme = self._engine().scheme()
        need = scheme.n if scheme.kind == "additive" else scheme.threshold + 1
        if len(opened) < need:
            missing = sorted(set(range(scheme.n)) - set(opened))
            raise ClientError(
                f"only {len(opened)} of {scheme.n} parties delivered their output shares (missing parties {missing}: "
                f"{'; '.join(errors) or 'unreachable'}); {need} are needed to verify the result, so it is refused. "
                "Retry when the nodes are reachable.", "missing_shares")
        domain = self._domain()
        decodings = output_decodings(self.plan.execution_plan())
        valid_rows = {o.valid_rows for o in opened.values()}
        if len(valid_rows) != 1:
            raise ClientError(f"nodes disagree on the number of valid rows ({sorted(valid_rows)}): inconsistent outputs",
                              "inconsistent")
        authenticated = self.plan.security == "malicious"
        result: dict[str, Any] = {}
        exact: dict[str, Any] = {}
        display: dict[str, Any] = {}
        decimals: dict[str, int] = {}
        scales = output_decimals(self.plan.execution_plan())
        for name in delivered_names(allow):
            publics = [o.public.get(name) for o in opened.values() if name in o.public]
            if publics and (len(publics) != len(opened) or any(json.dumps(p) != json.dumps(publics[0]) for p in publics)):
                raise ClientError(f"nodes disagree on the public value of {name!r}: inconsistent outputs", "inconsistent")
            undefined = {name in o.undefined for o in opened.values()}
            if len(undefined) != 1:
                raise ClientError(f"nodes disagree on whether {name!r} is defined: inconsistent outputs", "inconsistent")
            holders = {i: o.shares[name] for i, o in opened.items() if name in o.shares}
            if holders and len(holders) != len(opened):
                raise ClientError(f"only some nodes delivered {name!r}: inconsistent outputs", "inconsistent")
            if holders:
                value = self._verified(name, holders, domain, scheme, authenticated=authenticated)
                if undefined == {True}:
                    result[name] = None  # no valid rows: the statistic is undefined
                    continue
                fractions = decode_fractions(decodings[name], [int(v) for v in domain.to_signed(value).reshape(-1).tolist()],
                                             next(iter(valid_rows)))
                result[name], display[name], exact_value = _presented(name, fractions, value.shape, scales.get(name, 0))
                decimals[name] = scales.get(name, 0)
                if exact_value is not None:
                    exact[name] = exact_value
            elif publics:
                result[name] = publics[0]
        labels = {k: v for k, v in output_labels(self.plan.execution_plan()).items() if k in result}
        return {"session": self.session_id, "parties": sorted(opened), "outputs": result, "exact": exact,
                "display": display, "decimals": decimals, "labels": labels, "unreachable": errors}


def _presented(name: str, fractions: Sequence[Fraction], shape: tuple[int, ...],
               places: int) -> tuple[Any, Any, Any]:
    """One output as the result shows it: numbers, display texts, and the exact text (or None).

    Numbers are an ``int`` when the exact value is integral, else the nearest float;
    display texts are integers as they are, everything else rounded (half to even) to the
    output's declared scale, so no float noise (233.27999877929688) shows; the exact text
    (every unit of the field's scale; a float carries 53 bits) is given for non-integral
    aggregate outputs.
    """
    exact_value: Any = None
    if name != "score" and any(q.denominator != 1 for q in fractions):
        texts = [exact_text(q) for q in fractions]
        exact_value = texts[0] if len(texts) == 1 else texts
    shown = [str(q.numerator) if q.denominator == 1 else rounded_text(q, places) for q in fractions]
    flat: list[int | float] = [int(q) if q.denominator == 1 else float(q) for q in fractions]
    decoded: Any = flat
    text: Any = shown
    if name == "score":
        decoded = np.asarray(flat, dtype=np.float64).reshape(shape).tolist()
        text = np.asarray(shown, dtype=object).reshape(shape).tolist()
    if isinstance(decoded, list) and len(decoded) == 1 and not is_histogram_bins(name):
        decoded, text = decoded[0], text[0]
    return decoded, text, exact_value


def _header_text(columns: Mapping[str, Sequence[str]]) -> str:
    """The header as read, for messages: ``['amount', 'age'] (';'-delimited)`` for a file from :func:`read_csv`."""
    if isinstance(columns, CsvColumns):
        return f"{columns.header} ({columns.delimiter!r}-delimited)"
    return str(list(columns))


def _decimals_of(raw: str) -> int:
    """Decimal places a CSV number is written with (``"12.50"`` -> 1, ``"1e-3"`` -> 3, ``"7"`` -> 0)."""
    try:
        exponent = decimal.Decimal(raw.strip()).normalize().as_tuple().exponent
    except decimal.InvalidOperation:
        return 0  # float() accepted it (e.g. "inf"); the range check has the last word
    return max(0, -exponent) if isinstance(exponent, int) else 0
