"""`python -m lotdeploy.lab.broker ...` is `lotdeploy lab broker ...` (what `lab up` starts).

An entry point, so it may import the CLI; no other module of `lotdeploy.lab` does.
"""

import sys

from lotdeploy.cli import main

if __name__ == "__main__":
    main(["lab", "broker", *sys.argv[1:]])
