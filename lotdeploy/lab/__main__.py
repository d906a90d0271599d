"""`python -m lotdeploy.lab ...`: the `lotdeploy lab` group without the top-level CLI."""

from __future__ import annotations

from lotdeploy.lab.cli import lab

if __name__ == "__main__":
    lab(prog_name="lotdeploy lab")
