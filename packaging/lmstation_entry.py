"""The bundle's entry point: the same ``lmstation`` command (no arguments: the window)."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main())
