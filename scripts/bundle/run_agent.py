"""PyInstaller entry point of the bundle's ``inspector-agent`` executable (the console script's target)."""
import sys

from inspector.agent.main import main

sys.exit(main())
