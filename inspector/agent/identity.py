"""Who the agent is and whom it trusts: agent id, TLS certificate, pairing code, paired clients.

Files (``DATA`` = the agent's data folder)::

    DATA/identity/agent.json     {"agent_id": uuid4, "name": ...}
    DATA/identity/cert.pem       self-signed EC P-256 certificate (10 years)
    DATA/identity/key.pem        its private key (mode 0600)
    DATA/identity/clients.json   paired clients: name, Ed25519 public key, key id, sha256 of the token
    DATA/pairing-code.txt        the current pairing code (mode 0600)

The certificate's SHA-256 (of its DER bytes, :attr:`Identity.cert_sha256`) is what clients pin;
if the key or certificate is lost a new pair is made and every client must pair again (their
pin no longer matches, which is the point of pinning).

Pairing
-------
The code is 6 random digits (``secrets``), made at every start, after every successful pairing
and after :data:`~inspector.protocol.PAIRING_ATTEMPTS` wrong tries. A wrong try also costs
:data:`PAIRING_FAIL_DELAY_S` while holding the pairing lock, so guesses are serialised: with 5
tries per code and 10^6 codes an attacker needs ~10^5 codes (≈ 3 days of uninterrupted
guessing) for an even chance, and every new code is logged.

Tokens are 32 random bytes (url-safe base64); only their SHA-256 is stored, so a stolen
``clients.json`` gives no access. Comparisons are constant-time (``hmac.compare_digest``).
Pairing again with the same public key replaces that client's entry (and token).
"""
from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import socket
import ssl
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import protocol
from ..fsio import fsync_dir, write_atomic
from ..protocol import ApiError

log = logging.getLogger(__name__)

IDENTITY_DIR = "identity"
PAIRING_CODE_FILE = "pairing-code.txt"
CERT_VALID_DAYS = 3650
# A wrong code costs this long, serialised under the pairing lock (see the module doc).
PAIRING_FAIL_DELAY_S = 0.5


class IdentityError(RuntimeError):
    """The identity files exist but cannot be used (corrupt JSON, unreadable key); says which."""


@dataclass(frozen=True)
class PairedClient:
    name: str
    public_key: str        # base64 of the raw Ed25519 public key
    key_id: str            # signing.key_id_of(raw)
    token_sha256: str      # hex; the token itself is never stored
    paired: str            # ISO-8601 UTC


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` (permissions ``mode``) via a temporary file in the same
    folder, fsync, rename, fsync of the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: f.write(data), mode=mode)
    fsync_dir(path.parent, best_effort=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IdentityError(f"{path} cannot be read ({exc}); fix or delete it "
                            f"(deleting agent.json/clients.json means every client must pair again)") from None


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_certificate(hostname: str) -> tuple[bytes, bytes]:
    """A new self-signed EC P-256 certificate and key: (cert PEM, key PEM).

    SAN: localhost, 127.0.0.1, ``hostname`` and ``hostname.local`` (mDNS); valid 10 years.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    if hostname and hostname.isascii() and hostname != "localhost":
        names += [x509.DNSName(hostname), x509.DNSName(f"{hostname}.local")]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (hostname or "crack-agent")[:64]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "crack-inspector-agent")])
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(now + _dt.timedelta(days=CERT_VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class Identity:
    """The agent's identity in ``data_dir`` (created on first use; see the module doc).

    ``name``: the agent's display name; given, it replaces the stored one; default the
    stored name, else the host name. ``fail_delay``: seconds a wrong pairing code costs.
    Thread-safe.
    """

    def __init__(self, data_dir: str | os.PathLike, *, name: str | None = None,
                 fail_delay: float = PAIRING_FAIL_DELAY_S):
        self.data_dir = Path(data_dir)
        self.dir = self.data_dir / IDENTITY_DIR
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.cert_path = self.dir / "cert.pem"
        self.key_path = self.dir / "key.pem"
        self.clients_path = self.dir / "clients.json"
        self.pairing_code_path = self.data_dir / PAIRING_CODE_FILE
        self.fail_delay = float(fail_delay)
        self._lock = threading.Lock()          # clients and the code
        self._pair_lock = threading.Lock()     # serialises pairing attempts (see fail_delay)
        self.hostname = socket.gethostname()
        self.agent_id, self.name = self._load_agent(name)
        self.cert_der = self._load_or_make_cert()
        self.cert_sha256 = _sha256_hex(self.cert_der)
        self._clients = self._load_clients()
        self._code = ""
        self._wrong = 0
        self._new_code("agent started")

    def __repr__(self) -> str:
        return f"Identity({self.name!r}, id={self.agent_id}, cert={self.cert_sha256[:16]}…, clients={len(self._clients)})"

    # ------------------------------------------------------------------ files

    def _load_agent(self, name: str | None) -> tuple[str, str]:
        path = self.dir / "agent.json"
        stored: dict[str, Any] = {}
        if path.exists():
            stored = _read_json(path)
            if not isinstance(stored, dict) or not isinstance(stored.get("agent_id"), str):
                raise IdentityError(f"{path}: expected {{\"agent_id\": ..., \"name\": ...}}")
        agent_id = stored.get("agent_id") or str(uuid.uuid4())
        effective = (name or "").strip() or stored.get("name") or self.hostname or "crack-agent"
        if stored.get("agent_id") != agent_id or stored.get("name") != effective:
            atomic_write(path, json.dumps({"agent_id": agent_id, "name": effective}, indent=1).encode(), 0o644)
        return agent_id, effective

    def _load_or_make_cert(self) -> bytes:
        if self.cert_path.exists() and self.key_path.exists():
            try:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(self.cert_path, self.key_path)
                return ssl.PEM_cert_to_DER_cert(self.cert_path.read_text(encoding="ascii"))
            except (OSError, ValueError, ssl.SSLError) as exc:
                log.warning("TLS certificate %s unusable (%s): making a new one; every client must pair again",
                            self.cert_path, exc)
        cert_pem, key_pem = make_certificate(self.hostname)
        atomic_write(self.key_path, key_pem, 0o600)
        atomic_write(self.cert_path, cert_pem, 0o644)
        log.info("made a new TLS certificate %s", self.cert_path)
        return ssl.PEM_cert_to_DER_cert(cert_pem.decode("ascii"))

    def _load_clients(self) -> list[PairedClient]:
        if not self.clients_path.exists():
            return []
        raw = _read_json(self.clients_path)
        try:
            return [PairedClient(**c) for c in raw["clients"]]
        except (KeyError, TypeError) as exc:
            raise IdentityError(f"{self.clients_path}: not a list of paired clients ({exc})") from None

    def _save_clients(self) -> None:
        doc = {"clients": [asdict(c) for c in self._clients]}
        atomic_write(self.clients_path, json.dumps(doc, indent=1).encode(), 0o600)

    def _new_code(self, why: str) -> None:
        code = "".join(secrets.choice("0123456789") for _ in range(protocol.PAIRING_CODE_DIGITS))
        with self._lock:
            self._code, self._wrong = code, 0
        atomic_write(self.pairing_code_path, (code + "\n").encode(), 0o600)
        log.warning("pairing code %s (%s; also in %s)", code, why, self.pairing_code_path)

    # ------------------------------------------------------------------ public

    @property
    def pairing_code(self) -> str:
        with self._lock:
            return self._code

    def clients(self) -> list[PairedClient]:
        with self._lock:
            return list(self._clients)

    def ssl_context(self) -> ssl.SSLContext:
        """A server context with this certificate, TLS 1.2 or newer."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx

    def pair(self, code: str, client_name: str, public_key_b64: str, *, peer: str = "?") -> str:
        """The pairing code and the client's Ed25519 public key → a new bearer token.

        Raises :class:`ApiError`: 400 ``bad_public_key``; 403 ``wrong_pairing_code`` (after
        :data:`~inspector.protocol.PAIRING_ATTEMPTS` of them the code is replaced).
        """
        from .. import signing

        try:
            raw = signing.public_key_from_b64(public_key_b64)
        except signing.SigningError as exc:
            raise ApiError(400, "bad_public_key", f"public_key: {exc}") from None
        key_id = signing.key_id_of(raw)
        with self._pair_lock:
            with self._lock:
                ok = hmac.compare_digest(str(code).encode(), self._code.encode())
                if not ok:
                    self._wrong += 1
                    left = protocol.PAIRING_ATTEMPTS - self._wrong
            if not ok:
                log.warning("wrong pairing code from %s (%r)", peer, client_name)
                time.sleep(self.fail_delay)
                if left <= 0:
                    self._new_code(f"{protocol.PAIRING_ATTEMPTS} wrong codes")
                    raise ApiError(403, "wrong_pairing_code",
                                   "wrong pairing code; too many wrong codes, the agent has made a new one "
                                   "(see its console, log or pairing-code.txt)")
                raise ApiError(403, "wrong_pairing_code",
                               f"wrong pairing code ({left} more wrong code(s) and the agent makes a new one)")
            token = secrets.token_urlsafe(protocol.TOKEN_BYTES)
            client = PairedClient(name=client_name, public_key=base64.b64encode(raw).decode("ascii"), key_id=key_id,
                                  token_sha256=_sha256_hex(token.encode()), paired=_now_iso())
            with self._lock:
                self._clients = [c for c in self._clients if c.key_id != key_id] + [client]
                self._save_clients()
            log.info("paired with %r from %s (signing key %s)", client_name, peer, key_id)
            self._new_code(f"used by {client_name!r}")
        return token

    def authenticate(self, token: str | None) -> PairedClient | None:
        """The client this bearer token belongs to, or None. Constant-time per client."""
        if not token:
            return None
        digest = _sha256_hex(token.encode("utf-8", "surrogateescape")).encode()
        found = None
        with self._lock:
            for c in self._clients:
                if hmac.compare_digest(digest, c.token_sha256.encode()):
                    found = c
        return found

    def trusted_keys(self) -> dict[str, bytes]:
        """``{key_id: raw Ed25519 public key}`` of every paired client (for the model repository)."""
        with self._lock:
            clients = list(self._clients)
        return {c.key_id: base64.b64decode(c.public_key) for c in clients}
