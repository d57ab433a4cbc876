"""Fixtures for the in-process tests of the device's model store (``test_agent_repository.py``,
``test_agent_repository_recovery.py``): real packages, a seed repository copied per test.

Every package is the shipped int8 student or a variant of it: new versions and signatures
written with ``write_package``; broken ones (wrong hash, wrong label count, a manifest changed
after signing) by rewriting the manifest inside the zip, since ``write_package`` refuses to
write them. A repository with the shipped model active and 1.1.1 stored is built once per
module (``seed``) and copied for each test (``open_repo``).
"""
from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from inspector.agent.repository import ModelRepository
from inspector.edge.package import load_package, write_package
from inspector.link.signing import SigningKey
from support import SHIPPED, SHIPPED_ID

REPO = Path(__file__).resolve().parents[1]
BASE = SHIPPED_ID
V111, V112, V113 = "crack-student-1.1.1", "crack-student-1.1.2", "crack-student-1.1.3"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def trusted(key) -> dict[str, bytes]:
    return {key.key_id: key.public_bytes()}


def rezip(src: Path, dst: Path, **manifest_changes) -> Path:
    """``src`` with its manifest changed, no validation (ZIP_STORED: quick)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "manifest.json":
                data = json.dumps({**json.loads(data), **manifest_changes}).encode()
            zout.writestr(name, data)
    return dst


@pytest.fixture(scope="module")
def pkgs(tmp_path_factory, key) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("packages")
    base = load_package(SHIPPED, verify_reference=False)
    m = base.manifest.to_dict()

    def write(name: str, manifest: dict, verify: bool = False) -> Path:
        return write_package(out / f"{name}.crackpkg", manifest, base.onnx_bytes, base.reference, verify=verify)

    def signed(**changes) -> dict:
        return key.sign_manifest({**m, **changes})

    p = {"v111": write("v111", signed(version="1.1.1"), verify=True),
         "v112": write("v112", signed(version="1.1.2")),
         "v113": write("v113", signed(version="1.1.3")),
         "v111_rebuilt": write("v111_rebuilt", signed(version="1.1.1", extra={"rebuilt": True})),
         "unsigned": write("unsigned", {**m, "version": "1.2.0"}),
         "stranger": write("stranger", SigningKey.generate().sign_manifest({**m, "version": "1.2.0"})),
         "swapped_labels": write("swapped", signed(version="1.2.0", labels=["crack", "no_crack"]))}
    p["wrong_sha"] = rezip(p["v112"], out / "wrong_sha.crackpkg", model_sha256="0" * 64)
    p["three_labels"] = rezip(p["v112"], out / "three.crackpkg",
                              **signed(version="1.2.0", labels=["no_crack", "crack", "spalling"]))
    p["tampered"] = rezip(p["v112"], out / "tampered.crackpkg", version="1.2.0")  # signature of 1.1.2
    (out / "garbage.crackpkg").write_bytes(b"definitely not a zip archive\n" * 1000)
    p["garbage"] = out / "garbage.crackpkg"
    (out / "truncated.crackpkg").write_bytes(p["v112"].read_bytes()[:5_000_000])
    p["truncated"] = out / "truncated.crackpkg"
    return p


@pytest.fixture(scope="module")
def seed(tmp_path_factory, pkgs, trusted) -> Path:
    """A repository: the shipped model imported (active), 1.1.1 uploaded (stored)."""
    root = tmp_path_factory.mktemp("seed") / "repo"
    with ModelRepository(root, trusted_keys=lambda: trusted) as repo:
        repo.import_local(SHIPPED)
        upload(repo, pkgs["v111"])
    return root


@pytest.fixture()
def open_repo(tmp_path, seed, trusted):
    """``open_repo(**kw)``: a copy of the seed repository (or ``root=``), closed after the test."""
    opened = []

    def _open(root: Path | None = None, **kw) -> ModelRepository:
        if root is None:
            root = tmp_path / "repo"
            if not root.exists():
                shutil.copytree(seed, root)
        kw.setdefault("trusted_keys", lambda: trusted)
        repo = ModelRepository(root, **kw)
        opened.append(repo)
        return repo

    yield _open
    for repo in opened:
        repo.close()


def upload(repo: ModelRepository, path: Path):
    data = path.read_bytes()
    return repo.receive(io.BytesIO(data), len(data))


def files(folder: Path) -> set[str]:
    return {f.name for f in folder.iterdir()}


def referenced(root: Path) -> set[str]:
    return {m["file"] for m in json.loads((root / "state.json").read_text())["models"].values()}
