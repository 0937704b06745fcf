"""The pool PKI: an ML-DSA pool CA, node identities, CSRs and chain verification.

Protocol (docs/architecture.md "Cryptography", rows "Pool trust root", "Node identity"):

1. The node generates its ML-DSA identity key inside its pod (:meth:`NodeIdentity.generate`)
   and builds a CSR whose subject CN is its node id (:meth:`NodeIdentity.build_csr`).
2. The CA checks the CSR's self-signature (proof of possession, RFC 2986 §3), the
   algorithm and the subject, and issues a short-lived certificate whose SANs are the
   pod DNS name and the URI ``urn:pqmpc:node:<node id>`` (:meth:`PoolCA.issue`).
3. The issued certificate is appended to the transparency log (see
   :mod:`pqmpc_node.crypto.transparency`).
4. A verifier checks CA signature, validity window, node identity and log inclusion
   (:func:`verify_node_certificate`), failing with a :class:`CertificateError` whose
   ``reason`` is a stable label for metrics.

Pure: the clock is a ``now`` argument, randomness an ``rng`` callable.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, NewType, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pqmpc_node.crypto.suites import (
    MLDSAPrivateKey,
    MLDSAPublicKey,
    Suite,
    SuiteName,
    get_suite,
    signature_algorithm_of,
)

__all__ = [
    "suite_of_ca",
    "BOOTSTRAP_AUDIENCE",
    "OPERATOR_URI",
    "bootstrap_server_name",
    "verify_operator_certificate",
    "CertificateError",
    "ExpiredCertificateError",
    "InclusionChecker",
    "MalformedCertificateError",
    "NODE_URI_PREFIX",
    "NodeId",
    "NodeIdentity",
    "NotInLogError",
    "NotYetValidError",
    "PoolCA",
    "ProofOfPossessionError",
    "Rng",
    "VerifiedNode",
    "WrongAlgorithmError",
    "WrongCAError",
    "WrongIdentityError",
    "certificate_fingerprint",
    "needs_renewal",
    "node_id_of",
    "parse_certificate",
    "verify_node_certificate",
]

NodeId = NewType("NodeId", str)
Rng = Callable[[int], bytes]
"""Randomness source: ``rng(n)`` returns ``n`` uniformly random bytes (``os.urandom`` in production)."""

NODE_URI_PREFIX = "urn:pqmpc:node:"
BOOTSTRAP_AUDIENCE = "pqmpc.io/node-bootstrap"
"""The only token audience the operator's bootstrap accepts (a token for the API server is refused)."""
OPERATOR_URI = "urn:pqmpc:operator"
"""URI SAN of the operator's bootstrap certificate (never in a node certificate)."""
MAX_CERTIFICATE_BYTES = 32 * 1024
_DER = Encoding.DER
_NODE_ID = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class CertificateError(Exception):
    """A certificate was refused; ``reason`` is the metric label."""

    reason: ClassVar[str] = "invalid_certificate"


class MalformedCertificateError(CertificateError):
    """The bytes are not a parseable certificate or CSR."""

    reason = "malformed"


class WrongCAError(CertificateError):
    """Not issued (or not validly signed) by the expected pool CA."""

    reason = "wrong_ca"


class ExpiredCertificateError(CertificateError):
    """Past its not-after time."""

    reason = "expired"


class NotYetValidError(CertificateError):
    """Before its not-before time."""

    reason = "not_yet_valid"


class WrongIdentityError(CertificateError):
    """Valid, from the right CA, but naming a different node than the one expected."""

    reason = "wrong_identity"


class WrongAlgorithmError(CertificateError):
    """Signed or keyed with an algorithm other than the suite's."""

    reason = "wrong_algorithm"


class ProofOfPossessionError(CertificateError):
    """A CSR whose self-signature or subject does not check out."""

    reason = "bad_csr"


class NotInLogError(CertificateError):
    """A certificate or KEM key absent from the transparency log (rogue issuance)."""

    reason = "not_in_log"


class InclusionChecker(Protocol):
    """What :func:`verify_node_certificate` needs from a transparency-log verifier."""

    def require_node_certificate(self, der: bytes) -> None:
        """Raise :class:`NotInLogError` when ``der`` is not in the log."""
        ...


def _check_now(now: dt.datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (use datetime.now(timezone.utc))")


def _check_node_id(node_id: str) -> NodeId:
    if not _NODE_ID.match(node_id):
        raise ValueError(f"node id {node_id!r} must be a lowercase DNS-style name (a-z, 0-9, '-', '.')")
    return NodeId(node_id)


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 over the DER encoding, lowercase hex (``status.nodes[].certFingerprint``)."""
    return hashlib.sha256(cert.public_bytes(_DER)).hexdigest()


@dataclass(frozen=True)
class NodeIdentity:
    """A node's ML-DSA identity key; it is generated in the pod and never exported."""

    suite: Suite
    private_key: MLDSAPrivateKey = field(repr=False)

    @classmethod
    def generate(cls, suite: Suite, rng: Rng) -> NodeIdentity:
        """A fresh identity key for ``suite`` from 32 bytes of ``rng``."""
        return cls(suite, suite.signature.generate(rng(32)))

    @property
    def public_key(self) -> MLDSAPublicKey:
        """The ML-DSA public key."""
        return self.private_key.public_key()

    def public_key_bytes(self) -> bytes:
        """The raw public key."""
        return self.private_key.public_key().public_bytes_raw()

    def sign(self, data: bytes, context: bytes) -> bytes:
        """An ML-DSA signature over ``data`` under the purpose ``context``."""
        return self.private_key.sign(data, context)

    def build_csr(self, node_id: NodeId) -> bytes:
        """A DER CSR with subject CN = ``node_id``, self-signed (proof of possession)."""
        nid = _check_node_id(node_id)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, nid)])
        csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(self.private_key, None)
        return csr.public_bytes(_DER)


def parse_certificate(der: bytes) -> x509.Certificate:
    """Parse DER, refusing oversized or malformed input with :class:`MalformedCertificateError`."""
    if len(der) > MAX_CERTIFICATE_BYTES:
        raise MalformedCertificateError(f"certificate is {len(der)} bytes; the limit is {MAX_CERTIFICATE_BYTES}")
    try:
        return x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion is not a ValueError
        raise MalformedCertificateError(f"not a DER X.509 certificate: {exc}") from None


def node_id_of(cert: x509.Certificate) -> NodeId:
    """The node id from the certificate's ``urn:pqmpc:node:`` URI SAN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        raise MalformedCertificateError("certificate has no subjectAltName naming a pqmpc node") from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(NODE_URI_PREFIX)]
    if len(uris) != 1:
        raise MalformedCertificateError(f"expected exactly one {NODE_URI_PREFIX}<id> URI SAN, found {len(uris)}")
    return NodeId(uris[0][len(NODE_URI_PREFIX):])


@dataclass(frozen=True)
class VerifiedNode:
    """What a verified node certificate establishes."""

    node_id: NodeId
    dns_names: tuple[str, ...]
    public_key: MLDSAPublicKey
    fingerprint: str
    not_after: dt.datetime
    certificate: x509.Certificate = field(repr=False)


class PoolCA:
    """The pool's ML-DSA certificate authority (its key lives in the operator's Secret)."""

    def __init__(self, suite: Suite, private_key: MLDSAPrivateKey, certificate: x509.Certificate) -> None:
        if signature_algorithm_of(private_key) is not suite.signature:
            raise ValueError(f"suite {suite.name.value} needs an {suite.signature.label} CA key")
        if certificate.public_key() != private_key.public_key():
            raise ValueError("the CA certificate does not belong to this private key")
        self.suite = suite
        self._key = private_key
        self.certificate = certificate

    def __repr__(self) -> str:
        return f"PoolCA(suite={self.suite.name.value}, subject={self.certificate.subject.rfc4514_string()!r})"

    @classmethod
    def create(cls, suite: Suite, *, name: str, now: dt.datetime, lifetime: dt.timedelta, rng: Rng) -> PoolCA:
        """A new self-signed CA valid from ``now`` for ``lifetime``."""
        _check_now(now)
        key = suite.signature.generate(rng(32))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(int.from_bytes(rng(16), "big") >> 1 or 1)
            .not_valid_before(now)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, None)
        )
        return cls(suite, key, cert)

    @property
    def public_key(self) -> MLDSAPublicKey:
        """The CA's ML-DSA public key."""
        return self._key.public_key()

    def sign(self, data: bytes, context: bytes) -> bytes:
        """Sign ``data`` under ``context`` (used by the transparency log)."""
        return self._key.sign(data, context)

    def issue(
        self,
        csr_der: bytes,
        *,
        node_id: NodeId,
        dns_name: str,
        now: dt.datetime,
        lifetime: dt.timedelta,
        rng: Rng,
        extra_dns_names: Sequence[str] = (),
    ) -> x509.Certificate:
        """Issue a node certificate for a CSR after checking its proof of possession.

        Steps: parse the CSR; verify its self-signature; check its key algorithm and
        subject CN against ``node_id``; build a leaf certificate (not a CA; SANs: DNS
        name, ``extra_dns_names`` — the node's external names behind a gateway — and node
        URI; ``now`` .. ``now + lifetime``) and sign it.
        """
        _check_now(now)
        nid = _check_node_id(node_id)
        if len(csr_der) > MAX_CERTIFICATE_BYTES:
            raise MalformedCertificateError(f"CSR is {len(csr_der)} bytes; the limit is {MAX_CERTIFICATE_BYTES}")
        try:
            csr = x509.load_der_x509_csr(csr_der)
            valid = csr.is_signature_valid
            public = csr.public_key()
        except (ValueError, TypeError, x509.InvalidVersion) as exc:
            raise MalformedCertificateError(f"not a DER CSR: {exc}") from None
        if not valid:
            raise ProofOfPossessionError("CSR self-signature is invalid: the requester does not hold the key")
        try:
            alg = signature_algorithm_of(public)  # type: ignore[arg-type]
        except TypeError:
            raise WrongAlgorithmError(f"CSR key must be {self.suite.signature.label}") from None
        if alg is not self.suite.signature:
            raise WrongAlgorithmError(f"CSR key is {alg.label}; suite {self.suite.name.value} needs {self.suite.signature.label}")
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(cns) != 1 or cns[0].value != nid:
            raise ProofOfPossessionError(f"CSR subject must be CN={nid}")
        return (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(int.from_bytes(rng(16), "big") >> 1 or 1)
            .not_valid_before(now)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(dns_name), *(x509.DNSName(n) for n in extra_dns_names if n != dns_name),
                     x509.UniformResourceIdentifier(NODE_URI_PREFIX + nid)]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(self._key, None)
        )


    def issue_operator(
        self, public_key: MLDSAPublicKey, *, server_name: str, now: dt.datetime, lifetime: dt.timedelta, rng: Rng
    ) -> x509.Certificate:
        """The operator's bootstrap server certificate for this pool.

        Nodes push their CSR to the operator over PQ-TLS before they hold a certificate
        themselves; this certificate is how they know they talk to the operator of their
        pool: issued by the pool CA, SANs ``server_name`` (DNS, see
        :func:`bootstrap_server_name`) and :data:`OPERATOR_URI`, server-auth only, so no
        node certificate can pass for it and it cannot pass for a node's.
        """
        _check_now(now)
        if signature_algorithm_of(public_key) is not self.suite.signature:
            raise WrongAlgorithmError(f"the operator key must be {self.suite.signature.label}")
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)])
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(int.from_bytes(rng(16), "big") >> 1 or 1)
            .not_valid_before(now)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(server_name), x509.UniformResourceIdentifier(OPERATOR_URI)]),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._key, None)
        )


def suite_of_ca(ca_certificate: x509.Certificate) -> Suite:
    """The suite whose signature algorithm the pool CA uses (pq-default: ML-DSA-65, pq-high: ML-DSA-87).

    Raises :class:`WrongAlgorithmError` when the CA holds no suite's key.
    """
    try:
        algorithm = signature_algorithm_of(ca_certificate.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise WrongAlgorithmError(f"the pool CA certificate does not hold an ML-DSA key: {exc}") from None
    for name in SuiteName:
        if get_suite(name).signature is algorithm:
            return get_suite(name)
    raise WrongAlgorithmError(f"no suite uses the CA's {algorithm.label}")


def bootstrap_server_name(pool: str, namespace: str) -> str:
    """The TLS server name (SNI) under which the operator serves ``namespace/pool``'s node bootstrap."""
    return f"{pool}.{namespace}.bootstrap.pqmpc"


def verify_operator_certificate(
    cert: x509.Certificate, *, ca_certificate: x509.Certificate, suite: Suite, server_name: str, now: dt.datetime
) -> None:
    """The operator's bootstrap certificate, as a node checks it before sending its token.

    Steps: pool CA signature (``wrong_ca``); the suite's algorithm; validity; not a CA;
    the :data:`OPERATOR_URI` SAN and no node URI, and ``server_name`` among the DNS SANs
    (``wrong_identity``). OpenSSL has checked the chain already; this repeats it so the
    function stands alone, and adds what OpenSSL cannot know.
    """
    _check_now(now)
    if cert.issuer != ca_certificate.subject:
        raise WrongCAError(f"issued by {cert.issuer.rfc4514_string()!r}, not by the pool CA")
    try:
        cert.verify_directly_issued_by(ca_certificate)
        public = cert.public_key()
        alg = signature_algorithm_of(public)  # type: ignore[arg-type]
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (InvalidSignature, ValueError, TypeError):
        raise WrongCAError("the certificate does not verify under the pool CA key") from None
    except x509.ExtensionNotFound:
        raise MalformedCertificateError("the operator certificate lacks subjectAltName or basicConstraints") from None
    if alg is not suite.signature:
        raise WrongAlgorithmError(f"operator key is {alg.label}; suite {suite.name.value} needs {suite.signature.label}")
    if now > cert.not_valid_after_utc:
        raise ExpiredCertificateError(f"operator certificate expired at {cert.not_valid_after_utc.isoformat()}")
    if now < cert.not_valid_before_utc:
        raise NotYetValidError(f"operator certificate is valid only from {cert.not_valid_before_utc.isoformat()}")
    if bc.ca:
        raise MalformedCertificateError("a CA certificate cannot act as the operator's")
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if OPERATOR_URI not in uris or any(u.startswith(NODE_URI_PREFIX) for u in uris):
        raise WrongIdentityError(f"the peer is not the pool's operator (URIs {uris})")
    if server_name not in san.get_values_for_type(x509.DNSName):
        raise WrongIdentityError(f"the operator certificate does not name {server_name!r}")

def verify_node_certificate(
    cert: x509.Certificate | bytes,
    *,
    ca_certificate: x509.Certificate,
    suite: Suite,
    now: dt.datetime,
    expected_node_ids: Collection[NodeId] | None,
    log: InclusionChecker | None,
) -> VerifiedNode:
    """Verify a node certificate: CA → node certificate → identity → log.

    Steps: parse; issuer name and ML-DSA signature of the pool CA (``wrong_ca``);
    algorithm of the suite (``wrong_algorithm``); validity window at ``now``
    (``expired``/``not_yet_valid``); not a CA; node URI SAN among
    ``expected_node_ids`` when given (``wrong_identity``); inclusion in the log when a
    log is given (``not_in_log``). ``log=None`` is only for bootstrapping tests.
    """
    _check_now(now)
    c = parse_certificate(cert) if isinstance(cert, bytes) else cert
    try:
        return _verify_parsed(c, ca_certificate, suite, now, expected_node_ids, log)
    except ValueError as exc:  # pyca parses fields lazily: a malformed field surfaces here
        raise MalformedCertificateError(f"malformed certificate field: {exc}") from None


def _verify_parsed(
    c: x509.Certificate,
    ca_certificate: x509.Certificate,
    suite: Suite,
    now: dt.datetime,
    expected_node_ids: Collection[NodeId] | None,
    log: InclusionChecker | None,
) -> VerifiedNode:
    if c.issuer != ca_certificate.subject:
        raise WrongCAError(f"issued by {c.issuer.rfc4514_string()!r}, not by pool CA {ca_certificate.subject.rfc4514_string()!r}")
    try:
        c.verify_directly_issued_by(ca_certificate)
    except (InvalidSignature, ValueError, TypeError):
        raise WrongCAError("certificate signature does not verify under the pool CA key") from None
    try:
        public = c.public_key()
        alg = signature_algorithm_of(public)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise WrongAlgorithmError(f"node key must be {suite.signature.label}") from None
    if alg is not suite.signature:
        raise WrongAlgorithmError(f"node key is {alg.label}; suite {suite.name.value} needs {suite.signature.label}")
    if now > c.not_valid_after_utc:
        raise ExpiredCertificateError(f"certificate expired at {c.not_valid_after_utc.isoformat()}; renew it")
    if now < c.not_valid_before_utc:
        raise NotYetValidError(f"certificate is valid only from {c.not_valid_before_utc.isoformat()}")
    try:
        bc = c.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise MalformedCertificateError("node certificate lacks basicConstraints") from None
    if bc.ca:
        raise MalformedCertificateError("a CA certificate cannot act as a node certificate")
    node_id = node_id_of(c)
    if expected_node_ids is not None and node_id not in expected_node_ids:
        want = ", ".join(sorted(expected_node_ids)) or "(none)"
        raise WrongIdentityError(f"certificate names node {node_id!r}; expected {want}")
    if log is not None:
        log.require_node_certificate(c.public_bytes(_DER))
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return VerifiedNode(
        node_id=node_id,
        dns_names=tuple(san.get_values_for_type(x509.DNSName)),
        public_key=public,  # type: ignore[arg-type]
        fingerprint=certificate_fingerprint(c),
        not_after=c.not_valid_after_utc,
        certificate=c,
    )


def needs_renewal(cert: x509.Certificate, *, now: dt.datetime, renew_before: dt.timedelta) -> bool:
    """True when ``now`` is within ``renew_before`` of the certificate's expiry."""
    _check_now(now)
    return now >= cert.not_valid_after_utc - renew_before
