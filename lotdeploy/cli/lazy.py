"""A click group that imports a subcommand's module only when that subcommand runs.

`lotdeploy --help` must stay fast: the lab pulls in a broker, PKI pulls in cryptography, the
spec pulls in pydantic. The group knows each command's name, one-line help and where it lives;
`--help` lists them from that table and imports nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from lotdeploy.cli.table import FLEET_COMMANDS, LazyCommand


class LazyGroup(click.Group):
    """A group whose subcommands in `lazy_commands` are imported on first use."""

    def __init__(
        self, *args: Any, lazy_commands: Mapping[str, LazyCommand] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands: dict[str, LazyCommand] = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            self.add_command(self.lazy_commands[cmd_name].load(), cmd_name)
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """`lotdeploy plan|apply|verify|drift|audit|export-ansible FLEET_DIR ...`: the same
        command run over a fleet (lotdeploy.cli.fleet) when its SITE is a directory."""
        name, command, rest = super().resolve_command(ctx, args)
        if name in FLEET_COMMANDS and command is not None:
            from lotdeploy.cli.fleet import fleet_command, fleet_target

            if fleet_target(command, rest) is not None:
                return name, fleet_command(name), rest
        return name, command, rest

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Like click's, but lazy commands show their table line instead of being imported."""
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                command = self.commands[name]
                if command.hidden:
                    continue
                limit = formatter.width - 6 - max(len(n) for n in self.list_commands(ctx))
                rows.append((name, command.get_short_help_str(limit)))
            else:
                rows.append((name, self.lazy_commands[name].short_help))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
