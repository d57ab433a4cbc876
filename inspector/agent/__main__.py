"""``python -m inspector.agent``: the device agent (same as the ``inspector-agent`` command)."""
import sys

from inspector.agent.main import main

sys.exit(main())
