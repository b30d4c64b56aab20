"""A local Kafka with TLS, SASL SCRAM and ACLs, as an operator would run it: the material
(a certificate authority, the broker's certificate for 127.0.0.1 and localhost, SCRAM
users) and the broker properties for ``KafkaCluster(..., security=BrokerSecurity(...))``.

The broker's listeners in this mode (``deploy/kafka/kafka.sh start --secure DIR``):

- ``SASL_SSL`` for clients and between brokers: TLS with the broker certificate, SCRAM
  (SHA-512 and SHA-256) users created with Kafka's own ``kafka-storage format
  --add-scram`` before the first start;
- ``CONTROLLER`` over TLS with client certificates required (KRaft cannot use SCRAM on
  the controller listener: the credentials live in the metadata the controllers serve).

Authorization is KRaft's ``StandardAuthorizer`` with nothing allowed unless an ACL says
so; the super users are the admin (SCRAM) and the brokers themselves (their certificate
subject). ``COMPONENT_ACLS`` is the one list of what each foliowatch component may do;
``docs/security.md`` prints it as kafka-acls commands (``kafka_acls_commands``) and the
tests grant exactly it (``grant``).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from foliowatch.kafka_io import TOPIC_DLQ, TOPIC_REGRESSIONS, TOPIC_SAMPLES

BROKER_SUBJECT = "CN=foliowatch-broker"
SCRAM_ITERATIONS = 8192


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(directory: Path, name: str = "foliowatch test CA") -> "CertificateAuthority":
    """A new self-signed CA; its certificate is written to ``directory/<slug>.pem``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (name.replace(" ", "-") + ".pem")
    path.write_bytes(_pem_cert(cert))
    return CertificateAuthority(key, cert, path)


@dataclass
class CertificateAuthority:
    key: object
    cert: object
    path: Path          # the CA certificate (PEM): what clients give as ssl_cafile

    def issue(self, path: Path, common_name: str, hosts=("127.0.0.1", "localhost")) -> Path:
        """A key and certificate for ``hosts`` (server and client use), with the CA's
        certificate after it, in one PEM file (Kafka's ``ssl.keystore.type=PEM``)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
        key = _key()
        names = []
        for h in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                names.append(x509.DNSName(h))
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        path.write_bytes(_pem_key(key) + _pem_cert(cert) + _pem_cert(self.cert))
        path.chmod(0o600)
        return path


@dataclass
class BrokerSecurity:
    """What ``kafka.sh start --secure DIR`` needs, written into ``directory``.

    ``users``: SCRAM user -> password (SCRAM-SHA-512 and SCRAM-SHA-256 credentials both);
    ``admin`` is a super user and the brokers' own inter-broker identity."""

    directory: Path
    users: Dict[str, str]
    admin: str = "admin"
    ca: CertificateAuthority = field(init=False)

    def write(self) -> Path:
        if self.admin not in self.users:
            raise ValueError(f"BrokerSecurity: the admin user {self.admin!r} needs a password "
                             "in users")
        d = Path(self.directory)
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
        self.ca = make_ca(d)
        keystore = self.ca.issue(d / "broker.pem", BROKER_SUBJECT.split("=", 1)[1])
        admin_pw = self.users[self.admin]
        jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required"
        (d / "server.properties").write_text("\n".join([
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={keystore}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.ca.path}",
            "listener.name.controller.ssl.client.auth=required",
            "sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256",
            "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
            f'listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas} '
            f'username="{self.admin}" password="{admin_pw}";',
            f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={jaas};",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found=false",
            f"super.users=User:{self.admin};User:{BROKER_SUBJECT}",
        ]) + "\n")
        (d / "admin.properties").write_text(self.client_properties(self.admin))
        (d / "scram.txt").write_text("".join(
            f"SCRAM-SHA-{bits}=[name={user},iterations={SCRAM_ITERATIONS},password={pw}]\n"
            for user, pw in self.users.items() for bits in (512, 256)))
        for name in ("server.properties", "admin.properties", "scram.txt"):
            (d / name).chmod(0o600)
        return d

    def client_properties(self, user: str, mechanism: str = "SCRAM-SHA-512") -> str:
        """Kafka's own tools (``--command-config``) as ``user``."""
        return "\n".join([
            "security.protocol=SASL_SSL",
            f"sasl.mechanism={mechanism}",
            "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule "
            f'required username="{user}" password="{self.users[user]}";',
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.ca.path}",
        ]) + "\n"


PIPELINE_GROUP = "foliowatch-pipeline"

#: component -> (resource type, resource name, operation): everything it may do.
#: WRITE implies DESCRIBE and, since Kafka 3.0 (KIP-679), the idempotent producer's
#: IDEMPOTENT_WRITE; READ implies DESCRIBE. The simulator stands in for agents.
COMPONENT_ACLS: Dict[str, List[Tuple[str, str, str]]] = {
    "agent": [("topic", TOPIC_SAMPLES, "Write")],
    "pipeline": [("topic", TOPIC_SAMPLES, "Read"), ("group", PIPELINE_GROUP, "Read"),
                 ("topic", TOPIC_DLQ, "Write")],
    "detector": [("topic", TOPIC_REGRESSIONS, "Write")],
}


def kafka_acls_commands(principals: Dict[str, str], bootstrap: str = "BROKER:9093",
                        command_config: str = "admin.properties") -> List[str]:
    """``COMPONENT_ACLS`` as kafka-acls commands, ``principals``: component -> user."""
    out = []
    for component, user in principals.items():
        for rtype, rname, op in COMPONENT_ACLS[component]:
            out.append(f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config "
                       f"{command_config} --add --allow-principal User:{user} "
                       f"--operation {op} --{rtype} {rname}")
    return out


def grant(admin_settings, principals: Dict[str, Sequence[str]]) -> None:
    """Create ``COMPONENT_ACLS`` for ``principals`` (component -> users) through the
    admin API, as ``admin_settings`` (a super user)."""
    from kafka.admin import (ACL, ACLOperation, ACLPermissionType, KafkaAdminClient,
                             ResourcePattern, ResourceType)

    from foliowatch.kafka_io import kafka_python_kwargs
    acls = [ACL(f"User:{user}", "*", ACLOperation[op.upper()], ACLPermissionType.ALLOW,
                ResourcePattern(ResourceType[rtype.upper()], rname))
            for component, users in principals.items() for user in users
            for rtype, rname, op in COMPONENT_ACLS[component]]
    admin = KafkaAdminClient(**kafka_python_kwargs(admin_settings))
    try:
        result = admin.create_acls(acls)
    finally:
        admin.close()
    if result.get("failed"):
        raise RuntimeError(f"creating ACLs failed: {result['failed']}")
