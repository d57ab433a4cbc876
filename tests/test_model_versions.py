"""A name + version names one model: the next update's version is never one used before (after a
rollback too), the model history never loses a record, and the expert override of a refused gate
is written into the package's lineage (model bytes unchanged) and survives signing."""
from __future__ import annotations

from pathlib import Path

import pytest

from distill.update.lineage import next_version
from inspector.update.history import (HistoryError, ModelHistory, ModelVersion, OverrideError, gate_refused,
                                     next_free_version, override_package)
from inspector.edge.package import load_package, write_package
from inspector.paths import default_model
from inspector.link.protocol import ModelInfo, ModelList
from inspector.link.signing import SigningKey, verify_manifest_signature


def candidate(folder: Path, version: str, *, promoted: bool | None, seed: int = 0) -> Path:
    """The shipped INT8 package as an update's output ``version``, with a lineage that says
    ``promoted`` (None: no lineage). Another ``seed`` is another model: the graph's doc string
    changes, so its bytes and model_sha256 do (the weights and the reference run do not)."""
    import onnx

    base = load_package(default_model(), verify_reference=False)
    onnx_bytes = base.onnx_bytes
    if seed:
        g = onnx.load_from_string(onnx_bytes)
        g.doc_string = f"another model {seed}"
        onnx_bytes = g.SerializeToString()
    m = {**base.manifest.to_dict(), "version": f"{version}-int8", "parent_version": version, "signature": None}
    if promoted is not None:
        m["extra"] = {**m.get("extra", {}), "lineage": {
            "parent": {"name": m["name"], "version": "1.1.1"}, "promoted": promoted, "override": None,
            "gate": {"passed": promoted, "failed": [] if promoted else ["site_validation_mcc"], "rules": []}}}
    folder.mkdir(parents=True, exist_ok=True)
    return write_package(folder / f"crack-student-{version}-int8.crackpkg", m, onnx_bytes, base.reference,
                         verify=False)


def record(path: Path, version: str, **kw) -> ModelVersion:
    return ModelVersion("crack-student", version, "1.1.1", "2026-12-03T00:00:00+00:00", int8=str(path), **kw)


def test_next_version_skips_every_version_used_before():
    assert next_version("1.1.0") == "1.2.0" and next_version("1.1.0-int8", ()) == "1.2.0"
    assert next_version("1.9.3") == "1.10.0" and next_version("2.0") == "2.1"
    assert next_version("1.1.0", {"1.2.0"}) == "1.3.0"
    assert next_version("1.1.0", ["1.2.0-int8", "1.3.1", "2.5.0"]) == "1.4.0"    # -int8 twins, patches count
    assert next_version("2.0", ["2.1"]) == "2.2"
    assert next_free_version("1.1.1", ["1.2.0"]) == next_version("1.1.1", ["1.2.0"]) == "1.3.0"
    with pytest.raises(ValueError, match="--version"):
        next_version("latest", ["1.2.0"])


def test_after_a_rollback_the_next_update_gets_a_new_version_and_the_history_keeps_both(tmp_path):
    h = ModelHistory(tmp_path / "data")
    updates = h.root / "updates"
    base = "1.1.1"
    first = h.next_version("crack-student", base)
    assert first == "1.2.0"
    pkg_a = candidate(updates / "run-a", first, promoted=True)
    h.add(record(pkg_a, first, gate_passed=True))
    h.record_laptop_live("crack-student", f"{first}-int8", pkg_a, previous=("crack-student", "1.1.1-int8", "old"))
    assert h.laptop_rollback()["version"] == "1.1.1-int8"                   # back on the base

    second = h.next_version("crack-student", base)                           # the same base again
    assert second == "1.3.0"
    pkg_b = candidate(updates / "run-b", second, promoted=True, seed=1)
    h.add(record(pkg_b, second, gate_passed=True))
    assert [(v.version, v.int8) for v in h.updates()] == [(first, str(pkg_a)), (second, str(pkg_b))]
    assert h.updates()[0].sha256 != h.updates()[1].sha256

    # another model under a version already recorded: refused, the record stays
    pkg_c = candidate(tmp_path / "elsewhere", first, promoted=True, seed=2)
    with pytest.raises(HistoryError, match="already in the model history as another model"):
        h.add(record(pkg_c, first))
    assert [v.int8 for v in h.updates()] == [str(pkg_a), str(pkg_b)]

    # the same model again updates its record, keeping its override
    h.record_override("crack-student", second, "checked by hand on site", "ana")
    h.add(record(pkg_b, second, gate_passed=False, metrics={"golden": {"mcc": 0.9}}))
    again = h.updates()[1]
    assert again.metrics == {"golden": {"mcc": 0.9}} and again.override["by"] == "ana" and len(h.updates()) == 2

    # a shipped version is never taken by another model
    with pytest.raises(HistoryError, match="shipped"):
        h.add(record(pkg_c, "1.1.1"))


def test_taken_versions_count_the_updates_folder_and_the_device(tmp_path):
    h = ModelHistory(tmp_path / "data")
    candidate(h.root / "updates" / "run-x", "1.2.0", promoted=False)        # written, never registered
    info = ModelInfo(id="crack-student-1.3.0-int8", name="crack-student", version="1.3.0-int8", sha256="0" * 64,
                     size=1, labels=["no_crack", "crack"], input_size=96, quantization="int8-qdq", signed_by=None,
                     stored="2026-12-03T00:00:00Z")
    other = {**info.to_dict(), "id": "other-1.4.0", "name": "other", "version": "1.4.0"}
    device = ModelList(active=None, previous=[], models=[info.to_dict(), other])
    assert {"1.1.1", "1.2.0", "1.3.0"} <= h.taken_versions("crack-student", device=device)
    assert "1.4.0" not in h.taken_versions("crack-student", device=device)
    assert h.next_version("crack-student", "1.1.1") == "1.3.0"
    assert h.next_version("crack-student", "1.1.1", device=device) == "1.4.0"


def test_the_override_is_written_into_the_packages_lineage_and_signed(tmp_path):
    h = ModelHistory(tmp_path / "data")
    refused = candidate(tmp_path, "1.2.0", promoted=False)
    promoted = candidate(tmp_path / "p", "1.2.0", promoted=True)
    assert gate_refused(refused) == ["site_validation_mcc"]
    assert gate_refused(promoted) is None and gate_refused(default_model()) is None
    before = load_package(refused, verify_reference=False)
    h.add(record(refused, "1.2.0", gate_passed=False))

    with pytest.raises(OverrideError, match="reason"):
        override_package(refused, reason="ok", by="ana", history=h)
    with pytest.raises(OverrideError, match="who"):
        override_package(refused, reason="site set mislabelled", by=" ", history=h)
    assert gate_refused(refused) == ["site_validation_mcc"]                   # nothing written

    override_package(refused, reason="site set mislabelled", by="ana", history=h)
    after = load_package(refused)                                             # still a valid package
    assert after.onnx_bytes == before.onnx_bytes and after.manifest.model_sha256 == before.manifest.model_sha256
    lineage = after.manifest.extra["lineage"]
    assert lineage["promoted"] is True and gate_refused(refused) is None
    assert {k: lineage["override"][k] for k in ("by", "reason", "failed")} == {
        "by": "ana", "reason": "site set mislabelled", "failed": ["site_validation_mcc"]}
    assert h.updates()[0].override["reason"] == "site set mislabelled"
    assert h.updates()[0].override["at"] == lineage["override"]["at"]

    key = SigningKey.generate()                                               # the push signs it as today
    signed = key.sign_package(refused, tmp_path / "signed.crackpkg")
    m = load_package(signed, verify_reference=False).manifest
    assert verify_manifest_signature(m, {key.key_id: key.public_bytes()}) == key.key_id
    assert m.extra["lineage"]["override"]["by"] == "ana"

    override_package(refused, reason="another reason, later", by="bob", history=h)   # overridden once: kept
    assert load_package(refused, verify_reference=False).manifest.extra["lineage"]["override"]["by"] == "ana"
    assert [e["kind"] for e in h.events()] == ["override"]
