"""`python -m lotdeploy.lab ...` is `lotdeploy lab ...` (same error handling, same exit codes)."""

from __future__ import annotations

import sys

from lotdeploy.cli import main

if __name__ == "__main__":
    main(["lab", *sys.argv[1:]])
