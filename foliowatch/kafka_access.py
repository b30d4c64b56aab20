"""Why a Kafka client cannot get in: the one place that turns a refused connection into
a message naming the setting to fix, for every component (agent, simulator, pipeline,
detector).

kafka-python reports a wrong password, an untrusted broker certificate and an
unreachable broker alike: as a bootstrap that never completes (its TLS transport loses
the broker's authentication error when the broker closes the connection after it). So
after a client fails, ``diagnose`` opens one connection itself and walks the same steps
the client does, each bounded by a timeout: TCP connect, TLS handshake (verifying the
broker's certificate against ``ssl_cafile`` and its host name), and the SASL SCRAM
exchange (SaslHandshake v1, SaslAuthenticate v0; RFC 5802 and 7677). The first step
that fails names its setting. ``explain`` maps an authorization error (an ACL missing)
to the user and resource concerned.

Standard library only: the agent imports it on Python 3.9. The password is used for
the SCRAM proof and never appears in a message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import ssl
import struct
from typing import Optional

from foliowatch.errors import ConfigError

#: the docs section that lists each component's ACLs
ACL_DOC = "docs/security.md#acls"


class KafkaAccessError(ConfigError):
    """Kafka refused this client (credentials, certificate trust or an ACL): a setting,
    not the network, is wrong; the message names it."""


def _tls_context(settings) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=settings.ssl_cafile)
    if settings.ssl_certfile:
        ctx.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
    return ctx


class _Broker:
    """One connection speaking just enough of the Kafka protocol for SASL."""

    def __init__(self, sock):
        self.sock = sock
        self.correlation = 0

    def request(self, api_key: int, version: int, body: bytes) -> bytes:
        self.correlation += 1
        client = b"foliowatch-diagnose"
        header = struct.pack(">hhih", api_key, version, self.correlation, len(client)) + client
        msg = header + body
        self.sock.sendall(struct.pack(">i", len(msg)) + msg)
        size = struct.unpack(">i", self._read(4))[0]
        data = self._read(size)
        return data[4:]   # response header v0: the correlation id

    def _read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            out += chunk
        return out


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def _scram(broker: _Broker, mechanism: str, user: str, password: str) -> Optional[str]:
    """None when the broker accepts ``user``/``password``; else the broker's reason."""
    resp = broker.request(17, 1, _string(mechanism))          # SaslHandshake v1
    (error,) = struct.unpack(">h", resp[:2])
    if error:
        count = struct.unpack(">i", resp[2:6])[0]
        pos, enabled = 6, []
        for _ in range(max(count, 0)):
            n = struct.unpack(">h", resp[pos:pos + 2])[0]
            enabled.append(resp[pos + 2:pos + 2 + n].decode())
            pos += 2 + n
        return f"mechanism {mechanism} not enabled on the broker (it offers {', '.join(enabled)})"
    digest = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}[mechanism]
    nonce = base64.b64encode(os.urandom(24)).decode().rstrip("=")
    name = user.replace("=", "=3D").replace(",", "=2C")
    first_bare = f"n={name},r={nonce}"

    def authenticate(payload: str):
        body = struct.pack(">i", len(payload)) + payload.encode()
        r = broker.request(36, 0, body)                        # SaslAuthenticate v0
        err = struct.unpack(">h", r[:2])[0]
        n = struct.unpack(">h", r[2:4])[0]
        message = r[4:4 + n].decode(errors="replace") if n >= 0 else ""
        pos = 4 + max(n, 0)
        size = struct.unpack(">i", r[pos:pos + 4])[0]
        return err, message, r[pos + 4:pos + 4 + max(size, 0)].decode(errors="replace")

    err, message, server_first = authenticate("n,," + first_bare)
    if err:
        return message or f"error code {err}"
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(digest().name, password.encode(), base64.b64decode(fields["s"]),
                                 int(fields["i"]))
    client_key = hmac.new(salted, b"Client Key", digest).digest()
    stored_key = digest(client_key).digest()
    final_bare = f"c=biws,r={fields['r']}"
    auth_message = f"{first_bare},{server_first},{final_bare}".encode()
    signature = hmac.new(stored_key, auth_message, digest).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    try:
        err, message, _ = authenticate(f"{final_bare},p={base64.b64encode(proof).decode()}")
    except ConnectionError:
        return "the broker closed the connection after the password proof"
    return (message or f"error code {err}") if err else None


def diagnose(settings, timeout_s: float = 10.0) -> Optional[str]:
    """Connect to the first reachable bootstrap server as ``settings`` describe and
    return why the broker refuses this client (naming the setting as ``settings.name``
    does), or None when the connection and authentication succeed, or when no server
    answers (an outage, not a setting)."""
    name = settings.name
    for server in settings.bootstrap:
        host, _, port = server.rpartition(":")
        host = host.strip("[]")
        try:
            raw = socket.create_connection((host, int(port)), timeout=timeout_s)
        except OSError:
            continue
        try:
            sock = raw
            if settings.security_protocol.endswith("SSL"):
                try:
                    sock = _tls_context(settings).wrap_socket(raw, server_hostname=host)
                except ssl.SSLCertVerificationError as e:
                    trusted = (f"the CA in {settings.ssl_cafile}" if settings.ssl_cafile
                               else "this host's CA bundle")
                    if "match" in (e.verify_message or "") or "mismatch" in str(e):
                        return (f"{name('bootstrap')}: the broker's certificate at {server} "
                                f"is not valid for the name {host!r} ({e.verify_message}); "
                                "connect by a name or address its certificate lists")
                    return (f"{name('ssl_cafile')}: the broker's certificate at {server} is "
                            f"not trusted by {trusted} ({e.verify_message}); give the CA "
                            "certificate that signed the broker's certificate")
                except ssl.SSLError as e:
                    return (f"{name('security_protocol')}: TLS with {server} failed "
                            f"({e.reason or e}); is that listener {settings.security_protocol}?")
                except OSError:
                    return (f"{name('security_protocol')}: {server} closed the connection "
                            f"during the TLS handshake; is that listener "
                            f"{settings.security_protocol}?")
            if not settings.security_protocol.startswith("SASL"):
                return None
            if settings.sasl_mechanism not in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                return None
            try:
                reason = _scram(_Broker(sock), settings.sasl_mechanism,
                                settings.sasl_username or "", settings.password() or "")
            except (OSError, ConnectionError, struct.error, ValueError, KeyError):
                return (f"{name('security_protocol')}: {server} does not speak "
                        f"{settings.security_protocol} with {settings.sasl_mechanism}; check "
                        "the listener's protocol and mechanism")
            if reason is None:
                return None
            if "not enabled" in reason:
                return f"{name('sasl_mechanism')}: {reason}"
            return (f"{name('sasl_password')}: the broker at {server} refused user "
                    f"{settings.sasl_username!r} with {settings.sasl_mechanism} ({reason}); "
                    f"check the password and that the user has {settings.sasl_mechanism} "
                    "credentials on the broker")
        finally:
            try:
                raw.close()
            except OSError:
                pass
    return None


def explain(error: BaseException, settings, operation: str = "") -> Optional[str]:
    """A message naming the user and resource when ``error`` is a Kafka authorization
    error (an ACL missing); None for any other error."""
    name = settings.name
    kind = type(error).__name__
    resource = {"TopicAuthorizationFailedError": "topic",
                "GroupAuthorizationFailedError": "group",
                "ClusterAuthorizationFailedError": "cluster",
                "TransactionalIdAuthorizationFailedError": "transactional id"}.get(kind)
    if resource is None:
        return None
    what = f" {error.args[0]}" if error.args and isinstance(error.args[0], str) else ""
    user = settings.sasl_username or "this client's principal"
    doing = f" to {operation}" if operation else ""
    return (f"{name('sasl_username')}: user {user!r} is not authorized{doing} "
            f"({resource}{what} refused: {kind}); grant the ACLs listed in {ACL_DOC} with "
            "kafka-acls, or use the credentials meant for this component")


def refusal(settings, error: BaseException, operation: str = "") -> Optional[KafkaAccessError]:
    """After a Kafka client failed with ``error``: a ``KafkaAccessError`` naming the
    setting when the broker refuses this client (an ACL, the password, the certificate),
    None when the failure is something else (an outage, a timeout)."""
    if isinstance(error, KafkaAccessError):
        return error
    message = explain(error, settings, operation) or diagnose(settings)
    return KafkaAccessError(message) if message else None


def preflight(settings, timeout_s: float = 10.0) -> None:
    """Before a component starts its clients: raise ``KafkaAccessError`` when the broker
    refuses this client's certificate trust or credentials (an unreachable broker is
    left to the client's own retries)."""
    message = diagnose(settings, timeout_s)
    if message:
        raise KafkaAccessError(message)
