"""Ed25519 package signing (``inspector.link.signing``) on the shipped int8 package's manifest.

The signatures are checked against ``cryptography`` directly as well, over
``package.signed_payload``: a device that only knows the format must accept them.
"""
import base64
import dataclasses
import hashlib
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from inspector.edge import package as pkg
from inspector.edge.manifest import Manifest, Signature
from inspector.link.signing import (SigningError, SigningKey, key_id_of, public_key_from_b64,
                               verify_manifest_signature)
from support import SHIPPED


@pytest.fixture(scope="module")
def shipped() -> pkg.ModelPackage:
    return pkg.load_package(SHIPPED, verify_reference=False)


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


def trust(*keys: SigningKey) -> dict[str, bytes]:
    return {k.key_id: k.public_bytes() for k in keys}


def test_public_key_and_key_id(key):
    raw = key.public_bytes()
    assert len(raw) == 32 and public_key_from_b64(key.public_b64()) == raw
    assert key.key_id == key_id_of(raw) == hashlib.sha256(raw).hexdigest()[:16]
    assert SigningKey.generate().key_id != key.key_id


@pytest.mark.parametrize("value, message", [
    ("not base64!", "not valid base64"),
    (base64.b64encode(bytes(31)).decode(), "exactly 32 bytes.*got 31"),
    (base64.b64encode(bytes(33)).decode(), "exactly 32 bytes.*got 33"),
    ("", "exactly 32 bytes.*got 0"),
    (None, "must be a base64 string"),
])
def test_public_key_from_b64_refuses(value, message):
    with pytest.raises(SigningError, match=message):
        public_key_from_b64(value)


def test_load_or_create_makes_one_private_key_file(tmp_path):
    path = tmp_path / "app" / "signing-key.pem"
    first = SigningKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert os.listdir(path.parent) == ["signing-key.pem"]  # no temporary file left
    again = SigningKey.load_or_create(path)
    assert again.key_id == first.key_id and SigningKey.load(path).public_bytes() == first.public_bytes()


def test_load_refuses_what_is_not_an_ed25519_key(tmp_path):
    with pytest.raises(SigningError, match="cannot read the signing key"):
        SigningKey.load(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(SigningError, match="not an unencrypted PEM private key"):
        SigningKey.load(tmp_path / "junk.pem")
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "ec.pem").write_bytes(ec_pem)
    with pytest.raises(SigningError, match="not an Ed25519 key"):
        SigningKey.load(tmp_path / "ec.pem")


def test_signature_verifies_here_and_with_cryptography(key, shipped):
    signed = key.sign_manifest(shipped.manifest)
    sig = signed["signature"]
    assert sig["alg"] == "ed25519" and sig["key_id"] == key.key_id
    # Independent check: the raw signature over the canonical payload, by the raw public key.
    Ed25519PublicKey.from_public_bytes(key.public_bytes()).verify(base64.b64decode(sig["value"]),
                                                                  pkg.signed_payload(shipped.manifest))
    assert verify_manifest_signature(signed, trust(key)) == key.key_id
    assert verify_manifest_signature(Manifest.from_dict(signed), trust(SigningKey.generate(), key)) == key.key_id
    # Re-signing replaces the signature; the rest of the manifest is untouched.
    other = SigningKey.generate()
    resigned = other.sign_manifest(signed)
    assert resigned["signature"]["key_id"] == other.key_id
    assert {k: v for k, v in resigned.items() if k != "signature"} == {k: v for k, v in signed.items()
                                                                        if k != "signature"}


def test_refusals_are_distinct(key, shipped):
    signed = key.sign_manifest(shipped.manifest)
    stranger = SigningKey.generate()
    cases = {
        "unsigned": (shipped.manifest.to_dict(), trust(key), "unsigned"),
        "unknown_key": (stranger.sign_manifest(shipped.manifest), trust(key), f"key '{stranger.key_id}'.*not trust"),
        "bad_alg": (dataclasses.replace(Manifest.from_dict(signed), signature=Signature(
            "rsa", key.key_id, signed["signature"]["value"])), trust(key), "algorithm 'rsa' is not supported"),
        "bad_signature": ({**signed, "version": "9.9.9"}, trust(key), "does not match the manifest"),
    }
    # A stranger's signature presented under a trusted key id is a bad signature, not a trusted one.
    forged = stranger.sign_manifest(shipped.manifest)
    forged["signature"]["key_id"] = key.key_id
    messages = set()
    for reason, (manifest, trusted, message) in [*cases.items(), ("bad_signature", (forged, trust(key),
                                                                                    "does not match"))]:
        with pytest.raises(SigningError, match=message) as err:
            verify_manifest_signature(manifest, trusted)
        assert err.value.reason == reason
        messages.add(str(err.value))
    assert len(messages) == 4  # one message per reason (both bad signatures read the same)
    with pytest.raises(SigningError, match="does not match its id") as err:  # a corrupt trust list
        verify_manifest_signature(signed, {key.key_id: stranger.public_bytes()})
    with pytest.raises(SigningError, match="invalid manifest: labels") as err:
        verify_manifest_signature({**signed, "labels": "crack"}, trust(key))
    assert err.value.reason == "bad_manifest"


def test_sign_package_to_a_copy_and_in_place(key, shipped, tmp_path):
    dst = key.sign_package(SHIPPED, tmp_path / "signed.crackpkg")
    p = pkg.load_package(dst)  # the full check a device makes, reference run included
    assert verify_manifest_signature(p.manifest, trust(key)) == key.key_id
    assert p.onnx_bytes == shipped.onnx_bytes and p.manifest.model_sha256 == shipped.manifest.model_sha256
    assert dataclasses.replace(p.manifest, signature=None) == shipped.manifest

    other = SigningKey.generate()
    assert other.sign_package(dst, dst) == dst  # in place: atomic, nothing else left in the folder
    assert sorted(os.listdir(tmp_path)) == ["signed.crackpkg"]
    p2 = pkg.load_package(dst, verify_reference=False)
    assert verify_manifest_signature(p2.manifest, trust(other)) == other.key_id
    with pytest.raises(SigningError) as err:
        verify_manifest_signature(p2.manifest, trust(key))
    assert err.value.reason == "unknown_key"
