"""Packages a device must refuse, each with a clear error code, leaving the device exactly as it
was; oversize bodies refused before they are read; path-like model ids.

Real ``python -m inspector.agent`` processes on loopback (plain HTTP for speed); the device
helpers (:class:`agent_support.Device`, :func:`agent_support.check_device`) are shared with
the other fault files. Missing or wrong credentials on every endpoint are covered in
``test_agent_server.py``.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import socket
import time
import zipfile
from typing import Any, Callable

import numpy as np
import pytest
from agent_support import (OLD_ID, SEED, UPLOAD, Device, check_device, device_fixture, error_code, read_all,
                           request_head, rewrite_zip, wait_for, wait_status)
from agent_support import key, pkgs  # noqa: F401 - fixtures, used by name

from inspector.link import protocol
from inspector.link.protocol import API
from inspector.link.signing import SigningKey
from support import SHIPPED_PARENT, SHIPPED_VERSION, read_manifest


# ---------------------------------------------------------------------------- bad packages


def manual_signature(key: SigningKey, manifest: dict) -> dict:
    """Sign a manifest the library would refuse to sign (it validates first): the canonical
    JSON of the manifest without ``signature``, as :func:`inspector.edge.package.signed_payload`."""
    from cryptography.hazmat.primitives import serialization

    priv = serialization.load_pem_private_key(key.private_pem(), password=None)
    d = {k: v for k, v in manifest.items() if k != "signature"}
    payload = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return {**d, "signature": {"alg": "ed25519", "key_id": key.key_id,
                               "value": base64.b64encode(priv.sign(payload)).decode()}}


@pytest.fixture(scope="module")
def bad_packages(pkgs, key) -> dict[str, tuple[bytes, int, str, str]]:
    """name -> (file bytes, HTTP status, error code, a word the message must contain)."""
    src = pkgs / "new.crackpkg"
    base = read_manifest(src)
    base.pop("signature")

    def variant(name: str, manifest: dict | None = None, *, signer: SigningKey | None = key,
                after_signing: Callable[[dict], None] | None = None, **members: bytes) -> bytes:
        m = json.loads(json.dumps(manifest if manifest is not None else base))
        if signer is not None:
            m = manual_signature(signer, m)
        else:
            m["signature"] = None
        if after_signing:
            after_signing(m)
        replace: dict[str, Any] = {"manifest.json": m}
        replace.update({k.replace("_", "."): v for k, v in members.items()})
        return rewrite_zip(src, pkgs / f"{name}.crackpkg", replace).read_bytes()

    def edited(**changes: Any) -> dict:
        m = json.loads(json.dumps(base))
        for path, value in changes.items():
            *parents, leaf = path.split("__")
            d = m
            for p in parents:
                d = d[p]
            d[leaf] = value
        return m

    garbage = random.Random(SEED).randbytes(4096)
    other_sha = read_manifest(SHIPPED_PARENT)["model_sha256"]
    assert other_sha != base["model_sha256"]
    ref = zipfile.ZipFile(src).read("reference.npz")
    with np.load(io.BytesIO(ref)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["probs"] = arrays["probs"][:, ::-1].copy()  # the reference run no longer matches
    tampered_ref = io.BytesIO()
    np.savez(tampered_ref, **arrays)
    whole = src.read_bytes()
    return {
        "wrong model hash": (variant("hash", edited(version="1.1.2-int8", model_sha256=other_sha)),
                             422, "invalid_package", "model_sha256"),
        "missing signature": (variant("unsigned", signer=None), 403, "unsigned", "unsigned"),
        "signed by an unpaired key": (variant("stranger", signer=SigningKey.generate()),
                                      403, "unknown_key", "does not trust"),
        "manifest changed after signing": (
            variant("tampered", after_signing=lambda m: m.update(version="1.1.3-int8")),
            403, "bad_signature", "does not match"),
        "labels in another order": (variant("labels", edited(labels=base["labels"][::-1])),
                                    422, "labels_changed", "order"),
        "input size 64 for a 96-pixel model": (variant("shape", edited(input__size=64)),
                                               422, "invalid_package", "input.size=64"),
        "model.onnx is not ONNX": (variant("garbage", edited(model_sha256=hashlib.sha256(garbage).hexdigest()),
                                           model_onnx=garbage), 422, "invalid_package", "model.onnx"),
        "reference run does not match (reference.npz is not signed)": (
            variant("reference", reference_npz=tampered_ref.getvalue()), 422, "invalid_package", "reference"),
        "not a zip": (b"PK\x03\x04 this is not a zip archive " + garbage, 422, "invalid_package", "zip"),
        "truncated package": (whole[: len(whole) // 2], 422, "invalid_package", "zip"),
        "name '../evil'": (variant("evil", edited(name="../evil")), 422, "invalid_package", "name"),
        "an existing version with other contents": (
            variant("same-version", edited(version=SHIPPED_VERSION, created="2020-01-01T00:00:00Z")),
            409, "version_exists", "new version"),
        # not refused: the shipped package re-signed (another zip, same model, same signed fields)
        "re-signed copy": (variant("resigned", edited(version=SHIPPED_VERSION)), 200, "", ""),
    }


bad_device = device_fixture("bad")


def assert_unchanged(dev: Device, state: bytes, listing: protocol.ModelList) -> None:
    wait_for(lambda: not any(dev.incoming.iterdir()), 5.0, "incoming/ to be empty")
    assert dev.state_bytes() == state, "state.json changed"
    assert dev.listing() == listing
    assert wait_status(dev.agent, dev.token, lambda s: True).model["id"] == listing.active


class TestBadPackages:
    CASES = ["wrong model hash", "missing signature", "signed by an unpaired key", "manifest changed after signing",
             "labels in another order", "input size 64 for a 96-pixel model", "model.onnx is not ONNX",
             "reference run does not match (reference.npz is not signed)", "not a zip", "truncated package",
             "name '../evil'", "an existing version with other contents"]

    @pytest.mark.parametrize("case", CASES)
    def test_refused_and_nothing_changes(self, bad_device, bad_packages, case):
        dev = bad_device
        data, want_status, want_code, word = bad_packages[case]
        state, listing = dev.state_bytes(), dev.listing()
        status, headers, body = dev.agent.request("POST", UPLOAD, data, token=dev.token,
                                                  headers={"Content-Type": protocol.PACKAGE_CONTENT_TYPE})
        assert (status, error_code(body)) == (want_status, want_code), body
        message = json.loads(body)["error"]["message"]
        assert word in message, message
        assert str(dev.agent.data) not in message and "/tmp" not in message  # no internal paths
        assert headers["Content-Type"].startswith("application/json")
        assert_unchanged(dev, state, listing)
        assert not [p for p in dev.agent.data.parent.rglob("*evil*")]
        events = wait_status(dev.agent, dev.token, lambda s: True).events
        assert any(e["kind"] == "refused" and message in e["message"] for e in events), events

    def test_all_cases_are_listed(self, bad_packages):
        assert set(self.CASES) | {"re-signed copy"} == set(bad_packages)

    def test_resigned_copy_of_a_stored_version_changes_nothing(self, bad_device, bad_packages):
        """Not refused (the same model and signed manifest as the stored version), not stored again."""
        dev = bad_device
        state, listing = dev.state_bytes(), dev.listing()
        status, _, body = dev.agent.request("POST", UPLOAD, bad_packages["re-signed copy"][0], token=dev.token)
        assert status == 200, body
        assert protocol.ModelInfo.from_json(body) == listing.infos()[0]
        assert_unchanged(dev, state, listing)

    @pytest.mark.parametrize("expect", [True, False])
    def test_oversize_refused_before_the_body(self, bad_device, expect):
        """Content-Length over MAX_PACKAGE_BYTES: 413 at once, with no 100 Continue first; the
        agent does not wait for (or read) a body."""
        dev = bad_device
        state, listing = dev.state_bytes(), dev.listing()
        for length in (protocol.MAX_PACKAGE_BYTES + 1, 10**12):
            with socket.create_connection(("127.0.0.1", dev.agent.port), timeout=10) as sock:
                t0 = time.monotonic()
                sock.sendall(request_head("POST", UPLOAD, dev.token, length,
                                          "Expect: 100-continue\r\n" if expect else ""))
                raw = read_all(sock)
                assert time.monotonic() - t0 < 5.0
            assert raw.startswith(b"HTTP/1.1 413 "), raw[:200]
            assert error_code(raw.partition(b"\r\n\r\n")[2]) == "too_large"
        assert_unchanged(dev, state, listing)

    @pytest.mark.parametrize("model_id, want", [("../../etc/passwd", (400, "bad_request")),
                                                ("..", (404, "unknown_model")),
                                                (".", (404, "unknown_model")),
                                                ("/etc/passwd", (400, "bad_request")),
                                                ("packages", (404, "unknown_model")),
                                                ("state.json", (404, "unknown_model"))])
    def test_path_like_ids_are_refused(self, bad_device, model_id, want):
        dev = bad_device
        state, listing = dev.state_bytes(), dev.listing()
        status, _, body = dev.agent.request("POST", f"{API}/models/activate", {"id": model_id}, token=dev.token)
        assert (status, error_code(body)) == want, body
        assert_unchanged(dev, state, listing)

    def test_device_still_whole(self, bad_device):
        check_device(bad_device, allowed={OLD_ID}, expected=OLD_ID)
        assert bad_device.agent.stop() == 0
