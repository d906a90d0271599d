"""`python -m lotdeploy.lab ...` is `lotdeploy lab ...` (same error handling, same exit codes).

An entry point, so it may import the CLI; no other module of `lotdeploy.lab` does.
"""

from __future__ import annotations

import sys

from lotdeploy.cli import main

if __name__ == "__main__":
    main(["lab", *sys.argv[1:]])
