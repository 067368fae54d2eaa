"""TLS for the built-in seed transfer in tests, set up as agents with ``UseSSL`` set it up."""

from __future__ import annotations

from orchagent.config import Config
from orchagent.tls import client_creator, seed_server_options
from testbed.pki import CertificateAuthority

AGENTS_OU = "mysql-agents"


def agent_tls(directory: str, sender_ou: str | None = None, check_senders: bool = False) -> tuple[object, object]:
    """(receiver's TLS options, sender's connection creator), made from agent configs, all
    certificates from one CA made in ``directory``.  The sender presents a certificate with
    ``sender_ou`` unless that is None; with ``check_senders`` the receiver verifies senders'
    certificates (``SeedTransferValidOUs``)."""
    ca = CertificateAuthority(directory)
    receiver = ca.issue("receiver", ou=AGENTS_OU)
    receiver_config = Config(use_ssl=True, ssl_cert_file=receiver.cert, ssl_private_key_file=receiver.key,
                             ssl_ca_file=ca.cert, seed_transfer_valid_ous=(AGENTS_OU,) if check_senders else ())
    sender = ca.issue("sender", ou=sender_ou) if sender_ou is not None else None
    sender_config = Config(use_ssl=True, ssl_ca_file=ca.cert, ssl_cert_file=sender.cert if sender else "",
                           ssl_private_key_file=sender.key if sender else "")
    return seed_server_options(receiver_config), client_creator(sender_config, "localhost")
