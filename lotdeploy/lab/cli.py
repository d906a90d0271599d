"""`lotdeploy lab ...`: the lab broker and the multi-host lab cluster."""

from __future__ import annotations

import click


@click.group()
def lab() -> None:
    """A real multi-region Coreflux-compatible cluster on this machine, to rehearse on.

    \b
    Example:
      lotdeploy lab up --regions eu:2,us:1 && lotdeploy plan lab/site.yaml
    """


def _register() -> None:
    from lotdeploy.lab.broker.command import broker
    from lotdeploy.lab.commands import cut, delay, down, heal, partition, ssh, status, up

    for command in (up, down, status, delay, cut, heal, partition, ssh, broker):
        lab.add_command(command)


_register()
