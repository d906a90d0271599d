"""`python -m lotdeploy ...` is `lotdeploy ...` (an entry point: it may import the CLI)."""

from lotdeploy.cli import main

main()
