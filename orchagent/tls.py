"""TLS for the API listener, for calls to orchestrator, and for seed transfers (contract A.3.5).

Everything here is pyOpenSSL through ``twisted.internet.ssl``; TLS 1.2 is the minimum.  A peer
certificate's subject is read with ``cryptography`` (what pyOpenSSL itself is built on).
"""

from __future__ import annotations

import re

from cryptography.x509.oid import NameOID
from twisted.internet import ssl
from twisted.internet.interfaces import ISSLTransport
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from orchagent.config import Config, ConfigError

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _certificates(path: str) -> list[ssl.Certificate]:
    """Every certificate in a PEM file (a leaf followed by its chain, or a CA bundle)."""
    blocks = _PEM_CERTIFICATE.findall(_read(path))
    if not blocks:
        raise ValueError(f"{path}: no PEM certificate found")
    return [ssl.Certificate.loadPEM(block) for block in blocks]


def _identity(config: Config) -> tuple[ssl.PrivateCertificate, list[ssl.Certificate]]:
    """The agent's own certificate (with its chain) and key."""
    leaf, *chain = _PEM_CERTIFICATE.findall(_read(config.ssl_cert_file)) or [b""]
    identity = ssl.PrivateCertificate.loadPEM(leaf + b"\n" + _read(config.ssl_private_key_file))
    return identity, [ssl.Certificate.loadPEM(block) for block in chain]


def check(config: Config) -> None:
    """Load the TLS material once at start, so a bad file stops the agent with a clear message."""
    try:
        if config.use_ssl:
            server_options(config)
        if config.ssl_ca_file:
            _certificates(config.ssl_ca_file)
    except Exception as e:
        raise ConfigError(f"cannot load the TLS files (SSLCertFile {config.ssl_cert_file!r}, "
                          f"SSLPrivateKeyFile {config.ssl_private_key_file!r}, SSLCAFile "
                          f"{config.ssl_ca_file!r}): {e or type(e).__name__}") from None


def server_options(config: Config) -> ssl.CertificateOptions:
    """The API listener's TLS.

    With ``UseMutualTLS`` a client certificate is verified against ``SSLCAFile`` when given but
    not required at the TLS layer, so the status endpoint stays reachable (V1); the web layer then
    demands a certificate with an OU from ``SSLValidOUs`` on every other route.
    """
    return _server_options(config, verify_clients=config.use_mutual_tls)


def seed_server_options(config: Config) -> ssl.CertificateOptions:
    """The seed receiver's TLS.

    With ``SeedTransferValidOUs`` a sender's certificate is verified against ``SSLCAFile``; it is
    not required at the TLS layer, so that a sender without one is refused with a message that
    says what to configure (the receiver checks the OU once the sender names its seed).
    """
    return _server_options(config, verify_clients=bool(config.seed_transfer_valid_ous))


def _server_options(config: Config, verify_clients: bool) -> ssl.CertificateOptions:
    identity, chain = _identity(config)
    options = dict(
        privateKey=identity.privateKey.original,
        certificate=identity.original,
        extraCertChain=[c.original for c in chain],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
    if verify_clients:
        options.update(verify=True, requireCertificate=False,
                       caCerts=[c.original for c in _certificates(config.ssl_ca_file)])
    return ssl.CertificateOptions(**options)


def _peer_subject(transport: object):
    """The subject (a cryptography ``Name``) of the certificate the peer presented, verified by
    the TLS layer; None when it presented none or the connection is not TLS."""
    tls_transport = ISSLTransport(transport, None)
    certificate = tls_transport.getPeerCertificate() if tls_transport is not None else None
    return None if certificate is None else certificate.to_cryptography().subject


def peer_ous(transport: object) -> set[str] | None:
    """The OUs in the subject of the peer's certificate, or None without one."""
    subject = _peer_subject(transport)
    if subject is None:
        return None
    return {str(attribute.value) for attribute in subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)}


def peer_subject(transport: object) -> str | None:
    """The peer certificate's subject as an RFC 4514 string (for the audit log), or None."""
    subject = _peer_subject(transport)
    return None if subject is None else subject.rfc4514_string()


def client_creator(config: Config, hostname: str):
    """How this agent connects to ``hostname`` (orchestrator, or a seed receiver).

    The peer is verified against ``SSLCAFile`` (or the system store) with service-identity
    hostname checks, unless ``SSLSkipVerify``; our certificate is presented when configured.
    """
    client_certificate = _identity(config)[0] if config.ssl_cert_file and config.ssl_private_key_file else None
    if config.ssl_skip_verify:
        options = dict(raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
        if client_certificate is not None:
            options.update(privateKey=client_certificate.privateKey.original,
                           certificate=client_certificate.original)
        return ssl.CertificateOptions(**options)
    trust = (ssl.trustRootFromCertificates(_certificates(config.ssl_ca_file))
             if config.ssl_ca_file else ssl.platformTrust())
    return ssl.optionsForClientTLS(hostname, trustRoot=trust, clientCertificate=client_certificate,
                                  extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2})


@implementer(IPolicyForHTTPS)
class ClientPolicy:
    """treq/Agent policy applying :func:`client_creator` to every orchestrator node."""

    def __init__(self, config: Config):
        self._config = config

    def creatorForNetloc(self, hostname: bytes, port: int):
        return client_creator(self._config, hostname.decode("idna"))


