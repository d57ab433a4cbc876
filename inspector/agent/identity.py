"""Who the agent is and whom it trusts: agent id, TLS certificate, pairing code, paired clients.

Files (``DATA`` = the agent's data folder)::

    DATA/identity/agent.json     {"agent_id": uuid4, "name": ...}
    DATA/identity/cert.pem       self-signed EC P-256 certificate (10 years)
    DATA/identity/key.pem        its private key (mode 0600)
    DATA/identity/clients.json   paired clients: name, Ed25519 public key, key id, sha256 of the token
    DATA/identity/clients.lock   flock held while clients.json is changed (agent and command line)
    DATA/pairing-code.txt        the current pairing code (mode 0600)

The certificate's SHA-256 (of its DER bytes, :attr:`Identity.cert_sha256`) is what clients pin;
if the key or certificate is lost a new pair is made and every client must pair again (their
pin no longer matches, which is the point of pinning).

Pairing
-------
The code is 6 random digits (``secrets``), made at every start, after every successful pairing
and when the operator asks (``kill -HUP`` on the agent, see :meth:`Identity.new_code`). A wrong
code does **not** replace it: that let any stranger rotate the code a person was reading and so
keep everyone from pairing. Wrong codes are throttled instead, per client address and for all
addresses together, without any sleeping under a lock (:mod:`inspector.agent.throttle`: the
limits and the brute-force arithmetic, ≈ 57 years for one address, ≈ 2.9 years on average
for an attacker with any number of addresses).

Tokens are 32 random bytes (url-safe base64); only their SHA-256 is stored, so a stolen
``clients.json`` gives no access. Comparisons are constant-time (``hmac.compare_digest``).
Pairing again with the same public key replaces that client's entry (and token).

Unpairing
---------
A client is removed by the operator (``inspector-agent --revoke NAME``, which edits
``clients.json`` while the agent runs) or by itself (``DELETE /api/v1/pairing``); a client can
swap its token for a new one (``POST /api/v1/pairing/token``), the old one dies at once. Every
change to ``clients.json`` is a read-modify-write under ``identity/clients.lock`` (flock), so the
command line and the running agent never lose each other's changes, and the agent re-reads
the file whenever it changed on disk (one ``stat`` per authentication): a revoked token gets 401
from the next request on, and an open stream of it ends within a second.
"""
from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import secrets
import socket
import ssl
import threading
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from inspector.link import protocol
from inspector.fsio import fsync_dir, write_atomic
from inspector.link.protocol import ApiError
from inspector.agent.throttle import PairingThrottle, TooManyAttempts
from inspector.errors import InspectorError

log = logging.getLogger(__name__)

IDENTITY_DIR = "identity"
PAIRING_CODE_FILE = "pairing-code.txt"
CERT_VALID_DAYS = 3650


class IdentityError(InspectorError, RuntimeError):
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


class ClientRegistry:
    """``clients.json``: the paired clients, shared by the running agent and the command line.

    :meth:`current` re-reads the file when it changed on disk (inode, size, mtime);
    :meth:`change` is a read-modify-write under an exclusive ``flock`` on ``clients.lock``.
    Thread-safe.
    """

    def __init__(self, identity_dir: str | os.PathLike):
        self.dir = Path(identity_dir)
        self.path = self.dir / "clients.json"
        self.lock_path = self.dir / "clients.lock"
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._clients: list[PairedClient] = []
        self.current()

    def _file_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self) -> list[PairedClient]:
        if not self.path.exists():
            return []
        raw = _read_json(self.path)
        try:
            return [PairedClient(**c) for c in raw["clients"]]
        except (KeyError, TypeError) as exc:
            raise IdentityError(f"{self.path}: not a list of paired clients ({exc})") from None

    def current(self) -> list[PairedClient]:
        """The paired clients as the file says now."""
        with self._lock:
            stamp = self._file_stamp()
            if stamp != self._stamp:
                try:
                    self._clients = self._load()
                except IdentityError:
                    if self._stamp is None:
                        raise
                    # a damaged file while running: trust nobody new, keep nobody revoked
                    log.error("%s cannot be read; no client is trusted until it is fixed", self.path)
                    self._clients = []
                self._stamp = stamp
            return list(self._clients)

    def change(self, edit) -> list[PairedClient]:
        """``edit(clients) -> new clients`` under the file lock; the new list is saved."""
        import fcntl

        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock, open(self.lock_path, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            clients = edit(self._load())
            doc = {"clients": [asdict(c) for c in clients]}
            atomic_write(self.path, json.dumps(doc, indent=1).encode(), 0o600)
            self._clients, self._stamp = list(clients), self._file_stamp()
            return list(clients)

    def revoke(self, name_or_key_id: str) -> list[PairedClient]:
        """Remove every client with this name or key id; the removed ones."""
        gone: list[PairedClient] = []

        def edit(clients: list[PairedClient]) -> list[PairedClient]:
            gone.extend(c for c in clients if name_or_key_id in (c.name, c.key_id))
            return [c for c in clients if c not in gone]

        self.change(edit)
        return gone


class Identity:
    """The agent's identity in ``data_dir`` (created on first use; see the module doc).

    ``name``: the agent's display name; given, it replaces the stored one; default the
    stored name, else the host name. ``throttle``: the limits on wrong pairing codes.
    Thread-safe.
    """

    def __init__(self, data_dir: str | os.PathLike, *, name: str | None = None,
                 throttle: PairingThrottle | None = None):
        self.data_dir = Path(data_dir)
        self.dir = self.data_dir / IDENTITY_DIR
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.cert_path = self.dir / "cert.pem"
        self.key_path = self.dir / "key.pem"
        self.clients_path = self.dir / "clients.json"
        self.pairing_code_path = self.data_dir / PAIRING_CODE_FILE
        self.throttle = throttle or PairingThrottle()
        self._lock = threading.Lock()          # the code
        self.hostname = socket.gethostname()
        self.agent_id, self.name = self._load_agent(name)
        self.cert_der = self._load_or_make_cert()
        self.cert_sha256 = _sha256_hex(self.cert_der)
        self.registry = ClientRegistry(self.dir)
        self._code = ""
        self.new_code("agent started")

    def __repr__(self) -> str:
        return f"Identity({self.name!r}, id={self.agent_id}, cert={self.cert_sha256[:16]}…, clients={len(self.clients())})"

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

    def new_code(self, why: str) -> None:
        """Replace the pairing code (start, a successful pairing, the operator's SIGHUP)."""
        code = "".join(secrets.choice("0123456789") for _ in range(protocol.PAIRING_CODE_DIGITS))
        with self._lock:
            self._code = code
        atomic_write(self.pairing_code_path, (code + "\n").encode(), 0o600)
        log.warning("pairing code %s (%s; also in %s)", code, why, self.pairing_code_path)

    # ------------------------------------------------------------------ public

    @property
    def pairing_code(self) -> str:
        with self._lock:
            return self._code

    def clients(self) -> list[PairedClient]:
        return self.registry.current()

    def ssl_context(self) -> ssl.SSLContext:
        """A server context with this certificate, TLS 1.2 or newer."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx

    def pair(self, code: str, client_name: str, public_key_b64: str, *, peer: str = "?") -> str:
        """The pairing code and the client's Ed25519 public key → a new bearer token.

        Raises :class:`ApiError`: 400 ``bad_public_key``; 429 ``too_many_attempts`` (with
        ``retry_after``) while this address or the agent as a whole must wait, before the code
        is compared; 403 ``wrong_pairing_code`` (the code stays; see the module doc).
        """
        from inspector.link import signing

        try:
            raw = signing.public_key_from_b64(public_key_b64)
        except signing.SigningError as exc:
            raise ApiError(400, "bad_public_key", f"public_key: {exc}") from None
        key_id = signing.key_id_of(raw)
        # check, compare and record in one short critical section (no I/O, no sleeping): else
        # a burst of parallel guesses would all pass the check before the first was recorded
        with self._lock:
            try:
                self.throttle.check(peer)
            except TooManyAttempts as exc:
                raise ApiError(429, "too_many_attempts", f"pairing refused for now: {exc}",
                               retry_after=exc.retry_after) from None
            ok = hmac.compare_digest(str(code).encode(), self._code.encode())
            if ok:
                self._code = ""   # used: nobody else pairs with it while the new one is made
            else:
                wait = self.throttle.failed(peer)
        if not ok:
            log.warning("wrong pairing code from %s (%r); %d wrong in a row from there", peer, client_name,
                        self.throttle.failures(peer))
            raise ApiError(403, "wrong_pairing_code", "wrong pairing code (see the agent's console, log or "
                           "pairing-code.txt)" + (f"; the next try from this address in {math.ceil(wait)} s"
                                                  if wait else ""))
        self.throttle.succeeded(peer)
        token = secrets.token_urlsafe(protocol.TOKEN_BYTES)
        client = PairedClient(name=client_name, public_key=base64.b64encode(raw).decode("ascii"), key_id=key_id,
                              token_sha256=_sha256_hex(token.encode()), paired=_now_iso())
        self.registry.change(lambda clients: [c for c in clients if c.key_id != key_id] + [client])
        log.info("paired with %r from %s (signing key %s)", client_name, peer, key_id)
        self.new_code(f"used by {client_name!r}")
        return token

    def authenticate(self, token: str | None) -> PairedClient | None:
        """The client this bearer token belongs to, or None. Constant-time per client; sees
        changes of ``clients.json`` made by the command line at once."""
        if not token:
            return None
        digest = _sha256_hex(token.encode("utf-8", "surrogateescape")).encode()
        found = None
        for c in self.registry.current():
            if hmac.compare_digest(digest, c.token_sha256.encode()):
                found = c
        return found

    def unpair(self, client: PairedClient) -> bool:
        """Remove this client (its token dies at once); False if it was already gone."""
        gone = []

        def edit(clients: list[PairedClient]) -> list[PairedClient]:
            gone.extend(c for c in clients if c.token_sha256 == client.token_sha256)
            return [c for c in clients if c.token_sha256 != client.token_sha256]

        self.registry.change(edit)
        if gone:
            log.warning("client %r (signing key %s) unpaired itself", client.name, client.key_id)
        return bool(gone)

    def rotate_token(self, client: PairedClient) -> str:
        """A new token for this client; the old one dies at once. ApiError 401 if it is gone."""
        token = secrets.token_urlsafe(protocol.TOKEN_BYTES)
        found = []

        def edit(clients: list[PairedClient]) -> list[PairedClient]:
            out = []
            for c in clients:
                if c.token_sha256 == client.token_sha256:
                    c = PairedClient(**{**asdict(c), "token_sha256": _sha256_hex(token.encode())})
                    found.append(c)
                out.append(c)
            return out

        self.registry.change(edit)
        if not found:
            raise ApiError(401, "unauthorized", "this token was revoked meanwhile: pair with the agent again")
        log.info("client %r has a new token", client.name)
        return token

    def trusted_keys(self) -> dict[str, bytes]:
        """``{key_id: raw Ed25519 public key}`` of every paired client (for the model repository)."""
        clients = self.clients()
        return {c.key_id: base64.b64decode(c.public_key) for c in clients}
