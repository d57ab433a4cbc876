"""``inspector.numerics``, the 1.x import path of :mod:`inspector.edge.numerics`, kept for tools outside the
app: this module *is* that one (same object in ``sys.modules``, so patching either patches both).
New code imports :mod:`inspector.edge.numerics`."""
import sys

from inspector.edge import numerics as _module

sys.modules[__name__] = _module
