"""``inspector.engine``, the 1.x import path of :mod:`inspector.edge.engine`, kept for tools outside the
app: this module *is* that one (same object in ``sys.modules``, so patching either patches both).
New code imports :mod:`inspector.edge.engine`."""
import sys

from inspector.edge import engine as _module

sys.modules[__name__] = _module
