"""pyOpenSSL contexts for peer links: TLS 1.3 only, one PQ hybrid group, ML-DSA mutual auth.

pyOpenSSL 26.4 has no setter for the group list or signature algorithms and refuses
ML-DSA keys in ``use_privatekey``; we call the OpenSSL functions its ``_lib`` binding
already exposes (``SSL_CTX_set1_curves_list`` — the groups list, ``SSL_CTX_set1_sigalgs_list``,
``d2i_PrivateKey_bio`` + ``SSL_CTX_use_PrivateKey``), checking every return code. The
private key travels to OpenSSL as DER in memory only (never a file), and the Python
copy of the DER is dropped right after loading.

Context cache. Building a context (key load, key check, trust store) costs about as much
as a signature, so :func:`cached_context` keeps one context per credential and peer
policy: keyed by the SHA-256 of the node certificate, of the CA certificate, the suite
and the offered groups (the certificate binds the key pair, so equal keys mean the
same key). Links of one node share it; a renewed certificate gets a new entry, the
least recently used of :data:`CONTEXT_CACHE_SIZE` entries is dropped, and
:func:`clear_context_cache` drops all (for example when the identity key rotates).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi  # pyOpenSSL's cffi binding: see the module docstring
from OpenSSL._util import lib as _lib

from pqmpc_node.crypto.pki import InclusionChecker, NodeId, NodeIdentity, VerifiedNode, verify_node_certificate
from pqmpc_node.crypto.suites import Suite

__all__ = [
    "CONTEXT_CACHE_SIZE",
    "TlsIdentity",
    "VerifyState",
    "base_context",
    "cached_context",
    "check_peer",
    "clear_context_cache",
    "client_context",
    "make_context",
    "server_context",
    "verify_failure_reason",
]

CONTEXT_CACHE_SIZE = 16

# X509_V_ERR_* codes (openssl/x509_vfy.h) that we report under a precise reason.
_X509_V_ERR_CERT_NOT_YET_VALID = 9
_X509_V_ERR_CERT_HAS_EXPIRED = 10
# SSL_MODE_NO_AUTO_CHAIN (openssl/ssl.h); pyOpenSSL's binding does not name it.
_SSL_MODE_NO_AUTO_CHAIN = 0x00000008


@dataclass(frozen=True)
class TlsIdentity:
    """A node's TLS credentials: its pool certificate, identity key and the pool CA."""

    identity: NodeIdentity = field(repr=False)
    certificate: x509.Certificate
    ca_certificate: x509.Certificate

    @property
    def suite(self) -> Suite:
        """The pool suite."""
        return self.identity.suite


class VerifyState:
    """Per-connection record of what OpenSSL's chain verification complained about."""

    def __init__(self) -> None:
        self.errors: list[int] = []


def verify_failure_reason(state: VerifyState) -> str | None:
    """Map OpenSSL verification errors to our reason labels (None when none happened)."""
    if not state.errors:
        return None
    if _X509_V_ERR_CERT_HAS_EXPIRED in state.errors:
        return "expired"
    if _X509_V_ERR_CERT_NOT_YET_VALID in state.errors:
        return "not_yet_valid"
    return "wrong_ca"


def _verify_cb(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
    if not ok:
        state = conn.get_app_data()
        if isinstance(state, VerifyState):
            state.errors.append(errno)
    return bool(ok)


def _check(ok: int, what: str) -> None:
    if ok != 1:
        raise SSL.Error(f"OpenSSL refused {what}")


def base_context(groups: Sequence[str], sigalgs: Sequence[str]) -> SSL.Context:
    """The protocol settings every context here shares, without credentials or peer policy.

    TLS 1.3 only, exactly ``groups`` for the key exchange and ``sigalgs`` for signatures,
    no session tickets, and only the leaf certificate sent (``SSL_MODE_NO_AUTO_CHAIN``).
    """
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_options(SSL.OP_NO_TICKET)
    # Send the leaf only: every peer trusts the pool CA already. Without this OpenSSL
    # rebuilds (and re-verifies, one ML-DSA verify) our own chain at every handshake
    # and sends the CA certificate along.
    ctx.set_mode(_SSL_MODE_NO_AUTO_CHAIN)
    group_list = ":".join(groups)
    _check(_lib.SSL_CTX_set1_curves_list(ctx._context, group_list.encode()), f"groups {group_list}")
    sigalg_list = ":".join(sigalgs)
    _check(_lib.SSL_CTX_set1_sigalgs_list(ctx._context, sigalg_list.encode()), f"sigalgs {sigalg_list}")
    return ctx


def _suite_context(suite: Suite, offer_groups: Sequence[str] | None) -> SSL.Context:
    groups = list(offer_groups) if offer_groups is not None else [suite.tls_group.value]
    ctx = base_context(groups, [suite.signature.value])
    ctx.set_app_data(suite)  # which suite a context serves (the HTTPS front checks the group against it)
    return ctx


def _use_identity(ctx: SSL.Context, tls: TlsIdentity) -> None:
    """Install the node certificate and its ML-DSA key (DER in memory, see the module docstring)."""
    ctx.use_certificate(tls.certificate)
    der = tls.identity.private_key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
    bio = _lib.BIO_new_mem_buf(der, len(der))
    if bio == _ffi.NULL:
        raise MemoryError("BIO_new_mem_buf failed")
    try:
        pkey = _lib.d2i_PrivateKey_bio(bio, _ffi.NULL)
    finally:
        _lib.BIO_free(bio)
        del der
    if pkey == _ffi.NULL:
        raise SSL.Error("OpenSSL could not load the ML-DSA identity key")
    try:
        _check(_lib.SSL_CTX_use_PrivateKey(ctx._context, pkey), "the identity key")
    finally:
        _lib.EVP_PKEY_free(pkey)
    ctx.check_privatekey()


def _trust_only(ctx: SSL.Context, ca_certificate: x509.Certificate, mode: int) -> None:
    ctx.get_cert_store().add_cert(crypto.X509.from_cryptography(ca_certificate))  # type: ignore[union-attr]
    ctx.set_verify(mode, _verify_cb)
    ctx.set_verify_depth(1)


def make_context(tls: TlsIdentity, *, offer_groups: Sequence[str] | None = None) -> SSL.Context:
    """A context for either role: TLS 1.3 only, the suite's group only, peer cert required.

    ``offer_groups`` overrides the group list; it exists so tests can play a classical-only
    peer and must never be set in production.
    """
    ctx = _suite_context(tls.suite, offer_groups)
    _use_identity(ctx, tls)
    _trust_only(ctx, tls.ca_certificate, SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
    return ctx


def server_context(tls: TlsIdentity, *, offer_groups: Sequence[str] | None = None) -> SSL.Context:
    """A TLS server context for HTTPS: as :func:`make_context` but no client certificate asked.

    The context's app data is the suite (see :mod:`pqmpc_node.net.https`). ``offer_groups``
    is for tests only, as in :func:`make_context`.
    """
    ctx = _suite_context(tls.suite, offer_groups)
    _use_identity(ctx, tls)
    ctx.set_verify(SSL.VERIFY_NONE)
    return ctx


def client_context(
    ca_certificate: x509.Certificate, suite: Suite, *, offer_groups: Sequence[str] | None = None
) -> SSL.Context:
    """A TLS client context for HTTPS: no own certificate, trusts ``ca_certificate`` only.

    TLS 1.3 only, the suite's group and signature algorithm only, the server's certificate
    must chain (depth 1) to ``ca_certificate``; failures land in the connection's
    :class:`VerifyState` app data. ``offer_groups`` is for tests only (a classical client).
    """
    ctx = _suite_context(suite, offer_groups)
    _trust_only(ctx, ca_certificate, SSL.VERIFY_PEER)
    return ctx


_ContextKey = tuple[bytes, bytes, str, tuple[str, ...] | None]
_cache: OrderedDict[_ContextKey, SSL.Context] = OrderedDict()
_cache_lock = threading.Lock()


def _context_key(tls: TlsIdentity, offer_groups: Sequence[str] | None) -> _ContextKey:
    cert = hashlib.sha256(tls.certificate.public_bytes(Encoding.DER)).digest()
    ca = hashlib.sha256(tls.ca_certificate.public_bytes(Encoding.DER)).digest()
    return (cert, ca, tls.suite.name.value, tuple(offer_groups) if offer_groups is not None else None)


def cached_context(tls: TlsIdentity, *, offer_groups: Sequence[str] | None = None) -> SSL.Context:
    """:func:`make_context`, built once per credential and peer policy (see the module docstring)."""
    key = _context_key(tls, offer_groups)
    with _cache_lock:
        ctx = _cache.get(key)
        if ctx is not None:
            _cache.move_to_end(key)
            return ctx
    ctx = make_context(tls, offer_groups=offer_groups)
    with _cache_lock:
        _cache[key] = ctx
        _cache.move_to_end(key)
        while len(_cache) > CONTEXT_CACHE_SIZE:
            _cache.popitem(last=False)
    return ctx


def clear_context_cache() -> None:
    """Drop every cached context (and OpenSSL's copies of the identity keys with them)."""
    with _cache_lock:
        _cache.clear()


def check_peer(
    conn: SSL.Connection,
    tls: TlsIdentity,
    *,
    expected: Collection[NodeId],
    log: InclusionChecker,
    now: dt.datetime,
) -> VerifiedNode:
    """After the handshake: the peer's certificate names an expected node and is in the log.

    OpenSSL has already checked the chain and the CertificateVerify signature; this adds
    what it cannot know: which node this session expects, and the transparency log.
    Raises :class:`~pqmpc_node.crypto.pki.CertificateError` subclasses.
    """
    peer = conn.get_peer_certificate(as_cryptography=True)
    if peer is None:
        from pqmpc_node.crypto.pki import MalformedCertificateError

        raise MalformedCertificateError("peer presented no certificate")
    return verify_node_certificate(
        peer, ca_certificate=tls.ca_certificate, suite=tls.suite, now=now, expected_node_ids=expected, log=log
    )
