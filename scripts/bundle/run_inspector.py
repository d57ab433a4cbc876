"""PyInstaller entry point of the bundle's ``inspector`` executable (the console script's target)."""
import sys

from inspector.qt.main import main

sys.exit(main())
