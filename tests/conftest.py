"""Test-session setup: where the real crack data lives.

Tests run on small samples of the real data in ``../shared/data`` (or ``$CRACK_DATA_DIR``).
Without it the suite refuses to start rather than skip: a green run that tested nothing is
worse than a red one.
"""
import os
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# what the app remembers per user (the file dialogs' last folders) goes to a throw-away folder,
# never into the config of whoever runs the tests
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="crack-tests-config-")

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("CRACK_DATA_DIR", str(REPO.parent / "shared" / "data"))


def pytest_configure(config):
    data = Path(os.environ["CRACK_DATA_DIR"])
    if not (data / "ozgenel_ccic_subset").is_dir():
        raise pytest.UsageError(f"real crack data not found in {data}: put shared/ beside the repository "
                                f"or set CRACK_DATA_DIR")
