"""Ed25519 signatures on model packages: who may put a model on a device.

The app holds one :class:`SigningKey` (a PEM file, mode 0600, in its data folder) and signs
every package it pushes; at pairing it gives the device the raw public key, and the device
accepts an upload only if :func:`verify_manifest_signature` finds a valid signature by a key
it trusts. The signature covers :func:`inspector.edge.package.signed_payload` -- the canonical
manifest without its ``signature`` -- and with it ``model_sha256``, so the model bytes; it does
not cover ``reference.npz`` (the self-test, which the device re-runs anyway).

A key is named by its ``key_id``: the first 16 hex characters of SHA-256 of the raw 32-byte
public key (what the manifest's ``signature.key_id`` holds and a device's trust list is keyed by).

``cryptography`` and the standard library only (the Jetson agent imports this).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from inspector.edge import package as pkg
from inspector.edge.fields import PackageError
from inspector.edge.manifest import Manifest
from inspector.fsio import fsync_dir
from inspector.errors import InspectorError

ALG = "ed25519"
PUBLIC_KEY_BYTES = 32
KEY_ID_HEX = 16


class SigningError(InspectorError, ValueError):
    """A key or a signature is not acceptable; the message says which and why.

    ``reason`` is a stable word for callers that map it to a response: ``unsigned``,
    ``unknown_key``, ``bad_alg``, ``bad_signature``, ``bad_manifest`` or ``bad_key``.
    """

    def __init__(self, message: str, reason: str = "bad_key"):
        super().__init__(message)
        self.reason = reason


def key_id_of(public_raw: bytes) -> str:
    """The key id of a raw 32-byte Ed25519 public key (16 hex characters of its SHA-256)."""
    if not isinstance(public_raw, (bytes, bytearray)):
        raise SigningError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} raw bytes, got {type(public_raw).__name__}")
    if len(public_raw) != PUBLIC_KEY_BYTES:
        raise SigningError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} raw bytes, got {len(public_raw)}")
    return hashlib.sha256(bytes(public_raw)).hexdigest()[:KEY_ID_HEX]


def public_key_from_b64(s: Any) -> bytes:
    """Decode and check a public key as the app sends it at pairing (base64 of 32 raw bytes)."""
    if not isinstance(s, str):
        raise SigningError(f"public key must be a base64 string, got {type(s).__name__}")
    try:
        raw = base64.b64decode(s.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SigningError(f"public key is not valid base64 ({exc})") from None
    if len(raw) != PUBLIC_KEY_BYTES:
        raise SigningError(f"public key must be base64 of exactly {PUBLIC_KEY_BYTES} bytes (raw Ed25519), "
                           f"got {len(raw)} bytes")
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise SigningError(f"public key is not a valid Ed25519 key ({exc})") from None
    return raw


class SigningKey:
    """An Ed25519 private key that signs package manifests."""

    def __init__(self, private_key: Ed25519PrivateKey):
        if not isinstance(private_key, Ed25519PrivateKey):
            raise SigningError(f"expected an Ed25519 private key, got {type(private_key).__name__}")
        self._key = private_key
        self._public = private_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                              serialization.PublicFormat.Raw)
        self.key_id = key_id_of(self._public)

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id})"

    # ------------------------------------------------------------------ creation / storage

    @classmethod
    def generate(cls) -> "SigningKey":
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SigningKey":
        """Read a PEM (PKCS#8, unencrypted) Ed25519 private key."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SigningError(f"{path}: cannot read the signing key ({exc})") from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise SigningError(f"{path}: not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningError(f"{path}: holds a {type(key).__name__}, not an Ed25519 key")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike) -> "SigningKey":
        """Load the key at ``path``, or make one and store it there (mode 0600).

        The new file appears atomically and is never written over: if another process created
        it meanwhile, that key is loaded instead (two keys for one app would orphan a pairing).
        """
        path = Path(path)
        if path.exists():
            return cls.load(path)
        key = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(key.private_pem())
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # unlike rename, fails if the name exists
            except FileExistsError:
                return cls.load(path)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        fsync_dir(path.parent, best_effort=True)
        return key

    def private_pem(self) -> bytes:
        return self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())

    # ------------------------------------------------------------------ public half

    def public_bytes(self) -> bytes:
        """The raw 32-byte public key."""
        return self._public

    def public_b64(self) -> str:
        """The public key as :class:`inspector.link.protocol.PairRequest` carries it."""
        return base64.b64encode(self._public).decode("ascii")

    # ------------------------------------------------------------------ signing

    def sign_manifest(self, manifest: Manifest | Mapping[str, Any]) -> dict[str, Any]:
        """The manifest as a dict with ``signature`` set (any previous signature is replaced)."""
        m = _manifest(manifest)
        value = self._key.sign(pkg.signed_payload(m))
        d = m.to_dict()
        d["signature"] = {"alg": ALG, "key_id": self.key_id, "value": base64.b64encode(value).decode("ascii")}
        return d

    def sign_package(self, src: str | os.PathLike, dst: str | os.PathLike) -> Path:
        """Write a signed copy of the package ``src`` to ``dst`` (may be ``src``; atomic).

        The copy is validated as a device would (reference run included) before it is written.
        """
        p = pkg.load_package(src, verify_reference=False)
        return pkg.write_package(dst, self.sign_manifest(p.manifest), p.onnx_bytes, p.reference)


def _manifest(manifest: Manifest | Mapping[str, Any]) -> Manifest:
    if isinstance(manifest, Manifest):
        return manifest
    try:
        return Manifest.from_dict(manifest)
    except PackageError as exc:
        raise SigningError(f"invalid manifest: {exc}", "bad_manifest") from None


def verify_manifest_signature(manifest: Manifest | Mapping[str, Any], trusted: Mapping[str, bytes]) -> str:
    """Check the manifest's signature against ``trusted`` (key id -> raw public key).

    Returns the key id that signed it; raises :class:`SigningError` (see ``reason``) if the
    manifest is unsigned, names an unknown key or another algorithm, or the signature is wrong.
    """
    m = _manifest(manifest)
    sig = m.signature
    if sig is None:
        raise SigningError("the package is unsigned (manifest signature is null); only packages signed by a "
                           "paired app are accepted", "unsigned")
    if sig.alg != ALG:
        raise SigningError(f"signature algorithm {sig.alg!r} is not supported (only {ALG})", "bad_alg")
    public = trusted.get(sig.key_id)
    if public is None:
        raise SigningError(f"signed by key {sig.key_id!r}, which this device does not trust (not a paired app's "
                           f"key; trusted: {sorted(trusted) or 'none'})", "unknown_key")
    if key_id_of(public) != sig.key_id:
        raise SigningError(f"trusted key {sig.key_id!r} does not match its id (the trust list is inconsistent)",
                           "unknown_key")
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public)).verify(base64.b64decode(sig.value),
                                                                 pkg.signed_payload(m))
    except InvalidSignature:
        raise SigningError(f"the signature by key {sig.key_id!r} does not match the manifest (the manifest or "
                           f"the model was changed after signing)", "bad_signature") from None
    return sig.key_id
