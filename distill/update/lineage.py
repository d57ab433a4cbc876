"""Lineage: what a candidate came from, recorded in its manifest and in update.json.

The manifest (``inspector/edge/manifest.py``) is extended only where it is free-form, so every package
still loads on an older agent: ``parent_version`` (the base's FP32 version), ``training_data``
(the parent's datasets, replayed, plus one entry for the site with its counts and licence;
scalars only, as the loader requires) and ``extra.lineage``::

    {"parent": {"name", "version", "model_sha256"},
     "data": {"site": {"name", "licence", "labelled": {...}, "adapt": {...}, "validation": {...},
                       "unlabelled": {...}, "digest"}, "replay": {...}, "golden": {...}},
     "recipe": {...}, "threshold": {...}, "gate": {"passed", "failed", "rules"},
     "promoted", "override": null | {"by", "reason", "failed"}, "pushed_by", "created_by"}

Counts are ``{"patches", "sources", "crack", "no_crack"}``; ``digest`` is the sha256 of the
sorted content hashes of every site patch used, so the exact data can be audited later.
"""
from __future__ import annotations

import hashlib
from collections import Counter

def next_version(version: str, taken=()) -> str:
    """The default candidate version: the base's minor version + 1 (1.1.0 → 1.2.0), counted on
    past every minor version already used for the model (``taken``: versions of the same name on
    the laptop, in its history, in the updates folder, on the device; ``-int8`` twins count), so a
    rollback followed by an update never hands out a version a different model already has. One
    definition for the app and the engine: :func:`inspector.update.history.next_free_version`."""
    from inspector.update.history import next_free_version

    return next_free_version(version, taken)


def counts(samples) -> dict:
    labels = Counter(s.label for s in samples)
    return {"patches": len(samples), "sources": len({s.source for s in samples}),
            "crack": labels.get(1, 0), "no_crack": labels.get(0, 0)}


def digest(samples) -> str:
    return hashlib.sha256("\n".join(sorted(s.sha256 for s in samples)).encode()).hexdigest()


def by_surface(samples) -> dict:
    return dict(Counter(s.surface or "unknown" for s in samples))


def data_record(cfg, labelled, adapt, val, unlabelled, replay, golden) -> dict:
    return {
        "site": {"name": cfg.site_name, "licence": cfg.site_licence, "labelled": counts(labelled),
                 "adapt": counts(adapt), "validation": counts(val),
                 "unlabelled": {"patches": len(unlabelled), "sources": len({s.source for s in unlabelled})},
                 "digest": digest(list(labelled) + list(unlabelled))},
        "replay": {**counts(replay), "by_surface": by_surface(replay)},
        "golden": {**counts(golden), "by_surface": by_surface(golden)},
    }


def training_data(parent_manifest, record: dict) -> list[dict]:
    site = record["site"]
    entry = {"name": f"site: {site['name']}", "licence": site["licence"],
             "labelled_patches": site["labelled"]["patches"], "labelled_sources": site["labelled"]["sources"],
             "crack": site["labelled"]["crack"], "no_crack": site["labelled"]["no_crack"],
             "unlabelled_patches": site["unlabelled"]["patches"]}
    return [dict(t) for t in parent_manifest.training_data] + [entry]


def lineage(base, record: dict, recipe: dict, threshold: dict | None, gate: dict, *, promoted: bool,
            override: dict | None, pushed_by: str) -> dict:
    return {
        "parent": {"name": base.name, "version": base.version, "model_sha256": base.manifest.model_sha256},
        "data": record, "recipe": recipe, "threshold": threshold,
        "gate": {k: gate[k] for k in ("passed", "failed", "rules")},
        "promoted": promoted, "override": override, "pushed_by": pushed_by, "created_by": "distill update",
    }


def finalize_package(src, dst, *, training: list[dict], lineage_record: dict):
    """Rewrite the package at ``src`` with the final training data and lineage, atomically at ``dst``."""
    from inspector.edge.package import load_package, write_package

    pkg = load_package(src)
    manifest = pkg.manifest.to_dict()
    manifest["training_data"] = training
    manifest["extra"] = {**manifest.get("extra", {}), "lineage": lineage_record}
    return write_package(dst, manifest, pkg.onnx_bytes, pkg.reference)
