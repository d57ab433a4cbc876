"""The model store on the device (``inspector.agent.repository``), with real packages: storing,
verifying and refusing uploads, activating, rolling back, failures, the gate of the signed
lineage. Fixtures and packages: ``repository_support.py``; what opening repairs and the
SIGKILL test: ``test_agent_repository_recovery.py``.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from inspector.agent.repository import ModelRepository
from inspector.agent.repository_state import RepositoryError
from inspector.edge.package import load_package, write_package
from inspector.link.protocol import ApiError, ModelList
from support import SHIPPED, SHIPPED_ID, SHIPPED_VERSION
from repository_support import BASE, V111, V112, files, referenced, upload
from repository_support import key, open_repo, pkgs, seed, trusted  # noqa: F401 - fixtures, used by name


# --------------------------------------------------------------------------- storing and switching


def test_import_local_stores_activates_and_is_idempotent(open_repo, tmp_path, pkgs):
    root = tmp_path / "fresh"
    repo = open_repo(root)
    assert repo.active() is None and repo.active_path() is None and repo.recovered == []
    assert repo.list() == ModelList(active=None, previous=[], models=[])
    info = repo.import_local(SHIPPED)
    manifest = load_package(SHIPPED, verify_reference=False).manifest
    assert (info.id, info.name, info.version) == (BASE, "crack-student", SHIPPED_VERSION)
    assert (info.sha256, info.size) == (manifest.model_sha256, SHIPPED.stat().st_size)
    assert info.labels == ["no_crack", "crack"]
    assert (info.input_size, info.quantization, info.signed_by) == (96, "int8-qdq", None)
    assert repo.active() == info and repo.path_of(BASE) == repo.active_path()
    # Content-addressed: the file is named by its SHA-256, whatever the request called it.
    assert repo.active_path() == root / "packages" / f"{hashlib.sha256(SHIPPED.read_bytes()).hexdigest()}.crackpkg"
    assert repo.active_path().read_bytes() == SHIPPED.read_bytes()
    assert [e["kind"] for e in repo.events] == ["stored", "activated"]

    assert repo.import_local(SHIPPED) == info  # the agent imports its command-line model at every start
    assert len(repo.events) == 2 and files(root / "packages") == {repo.active_path().name}
    # The operator's package may be unsigned; with a model active it is stored, not activated.
    other = repo.import_local(pkgs["unsigned"])
    assert other.signed_by is None and repo.list().active == BASE
    with pytest.raises(RepositoryError) as err:
        repo.import_local(tmp_path / "missing.crackpkg")
    assert (err.value.status, err.value.code) == (400, "unreadable")
    before = repo.list()
    repo.close()
    again = open_repo(root)
    assert again.recovered == [] and again.list() == before and files(root / "incoming") == set()


def test_upload_activate_rollback(open_repo, pkgs, key):
    repo = open_repo()
    assert repo.list().active == BASE
    assert repo.info(V111).signed_by == key.key_id
    info = upload(repo, pkgs["v112"])
    assert (info.id, info.signed_by) == (V112, key.key_id) and repo.list().active == BASE  # stored, not active
    seen = []
    unsubscribe = repo.subscribe(lambda active: seen.append(active.id if active else None))

    assert repo.activate(V111).previous == [BASE]
    listing = repo.activate(V112)
    assert (listing.active, listing.previous) == (V112, [V111, BASE])
    assert repo.activate(V112) == listing  # already active: nothing changes
    assert ModelList.from_json(listing.to_json()) == listing and {i.id for i in listing.infos()} == {BASE, V111, V112}
    listing = repo.rollback()
    assert (listing.active, listing.previous) == (V111, [BASE])
    listing = repo.rollback()  # rollback walks back through the history
    assert (listing.active, listing.previous) == (BASE, [])
    with pytest.raises(RepositoryError) as err:
        repo.rollback()
    assert (err.value.status, err.value.code) == (409, "no_previous")
    assert seen == [V111, V112, V111, BASE]
    unsubscribe()
    for target in (V111, BASE, V112, V111, BASE):  # no duplicates in the history, never the active one
        listing = repo.activate(target)
        assert len(set(listing.previous)) == len(listing.previous) and listing.active not in listing.previous
    assert listing.previous == [V111, V112] and len(seen) == 4
    assert [e["kind"] for e in repo.events][-7:] == ["rollback", "rollback"] + ["activated"] * 5

    # A model id from a request is looked up, never joined into a path.
    for bad in ("../../state", "crack-student-9.9.9", "", None):
        with pytest.raises(RepositoryError) as err:
            repo.path_of(bad)
        assert (err.value.status, err.value.code) == (404, "unknown_model")
        with pytest.raises(RepositoryError, match="no model"):
            repo.activate(bad)
    # state.json is what a restart sees.
    state = json.loads((repo.root / "state.json").read_text())
    assert (state["active"], state["previous"]) == (BASE, [V111, V112]) and set(state["models"]) == {BASE, V111, V112}


def test_same_file_again_is_idempotent_a_changed_file_is_refused(open_repo, pkgs):
    repo = open_repo()
    first = repo.info(V111)
    state = (repo.root / "state.json").read_bytes()
    assert upload(repo, pkgs["v111"]) == first  # a retried upload: the same answer, nothing written
    assert (repo.root / "state.json").read_bytes() == state and len(files(repo.root / "packages")) == 2
    # the same package re-zipped (other bytes: re-signing writes a new zip), same model and
    # signed manifest: the same answer too, not a "different contents" refusal
    rezipped = pkgs["v111"].with_name("v111_rezipped.crackpkg")
    with zipfile.ZipFile(pkgs["v111"]) as src, zipfile.ZipFile(rezipped, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            dst.writestr(zipfile.ZipInfo(item.filename, date_time=(2001, 2, 3, 4, 5, 6)), src.read(item))
    assert rezipped.read_bytes() != pkgs["v111"].read_bytes()
    assert upload(repo, rezipped) == first
    assert (repo.root / "state.json").read_bytes() == state and len(files(repo.root / "packages")) == 2
    assert not files(repo.root / "incoming")
    with pytest.raises(RepositoryError) as err:
        upload(repo, pkgs["v111_rebuilt"])
    assert (err.value.status, err.value.code) == (409, "version_exists")
    assert "already on the device with different contents" in err.value.message
    assert (repo.root / "state.json").read_bytes() == state


@pytest.fixture(scope="module")
def shared_repo(tmp_path_factory, seed, trusted):
    """One copy of the seed for the refusal tests (a refusal must leave it untouched)."""
    root = tmp_path_factory.mktemp("refusals") / "repo"
    shutil.copytree(seed, root)
    with ModelRepository(root, trusted_keys=lambda: trusted) as repo:
        yield repo


@pytest.mark.parametrize("variant, status, code, message", [
    ("garbage", 422, "invalid_package", "not a zip archive"),
    ("truncated", 422, "invalid_package", "not a valid model package"),
    ("wrong_sha", 422, "invalid_package", "model_sha256: does not match model.onnx"),
    ("three_labels", 422, "invalid_package", "3 labels"),
    ("unsigned", 403, "unsigned", "unsigned"),
    ("stranger", 403, "unknown_key", "which this device does not trust"),
    ("tampered", 403, "bad_signature", "changed after signing"),
    ("swapped_labels", 422, "labels_changed", r"\['crack', 'no_crack'\] differ from the active model"),
    ("v111_rebuilt", 409, "version_exists", "already on the device"),
])
def test_refused_uploads_leave_no_trace(shared_repo, pkgs, variant, status, code, message):
    repo = shared_repo
    state = (repo.root / "state.json").read_bytes()
    stored = files(repo.root / "packages")
    with pytest.raises(RepositoryError, match=message) as err:
        upload(repo, pkgs[variant])
    e = err.value
    assert (e.status, e.code) == (status, code)
    assert "incoming" not in e.message and ".part" not in e.message  # no internal paths in answers
    api = e.to_api()
    assert isinstance(api, ApiError) and (api.status, api.code, api.message) == (status, code, e.message)
    assert (repo.root / "state.json").read_bytes() == state and files(repo.root / "packages") == stored
    assert files(repo.root / "incoming") == set()
    assert repo.events[-1]["kind"] == "refused" and e.message in repo.events[-1]["message"]


def test_label_swap_is_a_valid_package_only_the_device_can_refuse(pkgs):
    """The swapped package passes every check of its own (same probs, columns renamed): only
    the comparison with the active model's labels catches it."""
    assert load_package(pkgs["swapped_labels"]).manifest.labels == ("crack", "no_crack")


class NotToBeRead(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def read(self, n=-1):
        raise AssertionError("the body was read")


class Pipe(io.RawIOBase):
    """A non-seekable stream (like a socket): more may follow the body."""

    def __init__(self, data: bytes, fail_after: int | None = None):
        self._buf, self._fail_after, self._pos = io.BytesIO(data), fail_after, 0

    def readable(self) -> bool:
        return True

    def read(self, n=-1):
        if self._fail_after is not None and self._pos >= self._fail_after:
            raise TimeoutError("timed out")
        out = self._buf.read(n)
        self._pos += len(out)
        return out


def test_body_length_and_size_limits(open_repo, pkgs):
    small = open_repo(max_bytes=1000)
    size = pkgs["v112"].stat().st_size
    for length in (1001, size):
        with pytest.raises(RepositoryError, match=f"package of {length} bytes exceeds the device limit of 1000") as err:
            small.receive(NotToBeRead(), length)  # refused before a byte is read
        assert (err.value.status, err.value.code) == (413, "too_large")
    small.close()

    repo = open_repo()
    cases = [(io.BytesIO(b"x" * 10), 20, 400, "length_mismatch", "ended after 10 of the 20 bytes"),
             (io.BytesIO(b"x" * 30), 20, 400, "length_mismatch", "longer than the 20 bytes"),
             (Pipe(b"x" * (3 << 20), fail_after=2 << 20), 3 << 20, 400, "read_failed", "timed out"),
             (io.BytesIO(b""), -1, 411, "length_required", "byte count")]
    for stream, length, status, code, message in cases:
        with pytest.raises(RepositoryError, match=message) as err:
            repo.receive(stream, length)
        assert (err.value.status, err.value.code) == (status, code)
    assert files(repo.root / "incoming") == set()
    # From a socket-like stream exactly `length` bytes are read; what follows is the connection's.
    pipe = Pipe(pkgs["v112"].read_bytes() + b"NEXT REQUEST")
    assert repo.receive(pipe, size).id == V112 and pipe.read() == b"NEXT REQUEST"


def test_mark_failed_goes_back_to_the_newest_good_version(open_repo, pkgs):
    repo = open_repo()
    upload(repo, pkgs["v112"])
    repo.activate(V111)
    assert repo.activate(V112).previous == [V111, BASE]
    listing = repo.mark_failed(V111, "not active: only recorded")
    assert (listing.active, listing.previous) == (V112, [V111, BASE])
    seen = []
    repo.subscribe(lambda active: seen.append(active.id))
    listing = repo.mark_failed(V112, "probs are NaN on the first frames")
    assert (listing.active, listing.previous) == (BASE, [])  # V111 failed too: skipped
    assert seen == [BASE]
    assert repo.events[-1]["kind"] == "auto-rollback" and "probs are NaN" in repo.events[-1]["message"]
    listing = repo.mark_failed(BASE, "camera mismatch")  # nothing to go back to: it stays
    assert listing.active == BASE and "no previous version" in repo.events[-1]["message"]
    assert set(repo.failed) == {V111, V112, BASE} and repo.failed[V112]["reason"] == "probs are NaN on the first frames"
    repo.close()
    repo = open_repo()  # failures are remembered
    assert set(repo.failed) == {V111, V112, BASE}
    repo.activate(V111)  # the operator's explicit retry clears the record
    assert set(repo.failed) == {V112, BASE}


def test_a_failed_state_write_changes_nothing(open_repo, pkgs, monkeypatch):
    """The disk fills up while state.json is replaced: the answer says so, and neither the
    file nor the repository in memory changed (no half-stored package either)."""
    repo = open_repo()
    state, stored, listing = (repo.root / "state.json").read_bytes(), files(repo.root / "packages"), repo.list()
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == "state.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    for action in (lambda: upload(repo, pkgs["v112"]), lambda: repo.activate(V111),
                   lambda: repo.mark_failed(BASE, "x")):
        with pytest.raises(RepositoryError) as err:
            action()
        assert (err.value.status, err.value.code) == (507, "no_space")
        assert repo.list() == listing and repo.failed == {}
        assert (repo.root / "state.json").read_bytes() == state and files(repo.root / "packages") == stored
        assert files(repo.root / "incoming") == set() and not list(repo.root.glob(".state.json.*"))


def test_one_repository_per_folder(open_repo):
    repo = open_repo()
    with pytest.raises(RepositoryError) as err:
        ModelRepository(repo.root)
    assert (err.value.status, err.value.code) == (409, "in_use")
    repo.close()
    open_repo().close()


def test_concurrent_uploads_of_one_package(open_repo, pkgs):
    repo = open_repo()
    results, errors = [], []

    def work():
        try:
            results.append(upload(repo, pkgs["v112"]))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def switch():
        for _ in range(20):
            repo.activate(V111)
            repo.activate(BASE)
            repo.list()

    threads = [threading.Thread(target=work), threading.Thread(target=work), threading.Thread(target=switch)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 2 and results[0] == results[1]
    assert files(repo.root / "packages") == referenced(repo.root) and len(referenced(repo.root)) == 3
    assert [e["kind"] for e in repo.events].count("stored") == 1


def test_the_model_list_shows_the_gate_of_the_signed_lineage_and_a_refused_candidate_needs_the_override(
        open_repo, key, tmp_path):
    """``promoted`` / ``override`` come from the signed manifest's lineage (and survive a
    reopen and a rebuild of state.json); a candidate its gate refused is stored only with the
    expert override in that lineage."""
    base = load_package(SHIPPED, verify_reference=False)
    m = base.manifest.to_dict()

    def candidate(version: str, promoted: bool, override: dict | None) -> Path:
        lineage = {"promoted": promoted, "override": override,
                   "gate": {"passed": False, "failed": ["golden_mcc"], "rules": []}}
        signed = key.sign_manifest({**m, "version": version, "extra": {**m.get("extra", {}), "lineage": lineage}})
        return write_package(tmp_path / f"{version}.crackpkg", signed, base.onnx_bytes, base.reference, verify=False)

    override = {"by": "ana", "reason": "site set mislabelled", "failed": ["golden_mcc"], "at": "2026-12-03T10:00:00Z"}
    repo = open_repo()
    with pytest.raises(RepositoryError) as err:
        upload(repo, candidate("1.3.0", False, None))
    assert (err.value.status, err.value.code) == (422, "not_promoted") and "override" in str(err.value)
    info = upload(repo, candidate("1.4.0", True, override))
    assert info.promoted is True and info.override == override
    listed = {i.id: i for i in repo.list().infos()}
    assert listed[info.id].override == override and listed[SHIPPED_ID].promoted is None
    assert "promoted" not in listed[SHIPPED_ID].to_dict()       # an older app still reads a lineage-free entry
    root = repo.root
    repo.close()
    with ModelRepository(root, trusted_keys=lambda: {key.key_id: key.public_bytes()}) as again:
        assert {i.id: i for i in again.list().infos()}[info.id].override == override
    (root / "state.json").write_text("{damaged")
    with ModelRepository(root, trusted_keys=lambda: {key.key_id: key.public_bytes()}) as rebuilt:
        assert {i.id: i for i in rebuilt.list().infos()}[info.id].override == override
