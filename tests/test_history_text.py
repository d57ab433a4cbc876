"""Models…: the metrics column says what each number is (issue 22: "port quay test 0.000", an MCC
on a set of one class, shown without explanation; "golden" twice)."""
from __future__ import annotations

from inspector.qt.update.history_view import metrics_text
from support import SHIPPED, read_manifest


def test_a_one_class_set_shows_its_recall_not_a_meaningless_mcc():
    metrics = read_manifest(SHIPPED)["metrics"]
    assert "crack only" in next(k for k in metrics if k.startswith("port_quay"))
    short = metrics_text(metrics)
    assert "port quay test recall" in short and "port quay test 0.000" not in short
    long = metrics_text(metrics, long=True)
    assert "one class: MCC undefined" in long and len(long.splitlines()) == len(metrics)


def test_sets_that_share_a_short_name_keep_their_full_names():
    gate = {"golden (fp32)": {"candidate": {"mcc": 0.91}, "base": {"mcc": 0.92}},
            "golden (int8)": {"candidate": {"mcc": 0.9}, "base": {"mcc": 0.9}},
            "site validation (12 sources)": {"candidate": {"mcc": 0.71}}}
    assert metrics_text(gate) == "golden (fp32) 0.910 · golden (int8) 0.900 · site validation 0.710"
    assert metrics_text({}) == "—" and metrics_text({}, long=True) == "no metrics"
