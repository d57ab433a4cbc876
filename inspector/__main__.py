"""``python -m inspector``: the live inspection window (same as the ``inspector`` command)."""
import sys

from inspector.qt.main import main

sys.exit(main())
