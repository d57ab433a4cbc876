"""PyInstaller entry point of the bundle's ``distill`` executable (the console script's target)."""
import sys

from distill.cli import main

sys.exit(main())
