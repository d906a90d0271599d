"""`lotdeploy audit`, `lotdeploy import`, `lotdeploy takeover`: the clusters operators already
have (docs/adopt.md).

audit and import take a site file (the brokers reached over SSH, as `status` does) or an
ad hoc list of `address[:port]` (reached directly, with the admin's password from a file
or an environment variable: never on the command line). Both only read the brokers.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lotdeploy.cli.common import (
    directory_option,
    load,
    transport_factory,
)
from lotdeploy.errors import LotdeployError
from lotdeploy.exitstatus import ExitStatus

if TYPE_CHECKING:
    from lotdeploy.adopt.survey import Access, Member, Survey
    from lotdeploy.model import Site
    from lotdeploy.secret import Secret

_DNS = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)

target_argument = click.argument(
    "targets", nargs=-1, required=True, metavar="SITE|ADDRESS[:PORT]..."
)
admin_options = [
    click.option(
        "--admin-user",
        default="root",
        show_default=True,
        help="With addresses: the brokers' admin user.",
    ),
    click.option(
        "--admin-password-file",
        type=click.Path(path_type=Path, dir_okay=False),
        help="With addresses: a file holding the admin password (never give it on the "
        "command line).",
    ),
    click.option(
        "--admin-password-env",
        metavar="VAR",
        help="With addresses: the environment variable holding the admin password.",
    ),
    click.option(
        "--accept-new-host-keys",
        is_flag=True,
        help="With a site: accept and record unknown SSH host keys.",
    ),
    click.option(
        "--parallelism",
        type=click.IntRange(1, 200),
        default=10,
        show_default=True,
        help="Brokers read at once.",
    ),
]


def _options(options: list[Any]) -> Any:
    def apply(function: Any) -> Any:
        for option in reversed(options):
            function = option(function)
        return function

    return apply


def is_site_file(targets: tuple[str, ...]) -> bool:
    """One argument naming a file (or a .yaml/.yml name): a site; else addresses."""
    if len(targets) != 1:
        return False
    path = Path(targets[0])
    return path.suffix in (".yaml", ".yml") or path.is_file()


def parse_address(text: str) -> tuple[str, int]:
    """`host[:port]` (an IPv6 address in brackets) -> (host, port); default port 1883."""
    from lotdeploy.protocol import DEFAULT_PORT

    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise click.BadParameter(f"{text!r}: expected [IPV6]:PORT")
        rest = rest[1:]
        if rest:
            port = _port(text, rest)
    elif text.count(":") == 1:
        host, _, rest = text.partition(":")
        port = _port(text, rest)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _DNS.fullmatch(host):
            raise click.BadParameter(f"{text!r} is no address[:port]") from None
    return host, port


def _port(text: str, value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise click.BadParameter(f"{text!r}: the port must be a number from 1 to 65535")
    return int(value)


def admin_secret(password_file: Path | None, password_env: str | None) -> Secret:
    """The admin password by reference: a file or an environment variable."""
    from lotdeploy.fsutil import UnreadableFile, read_regular_file
    from lotdeploy.secret import Secret

    if bool(password_file) == bool(password_env):
        raise click.UsageError(
            "with addresses, give the admin password by reference: --admin-password-file "
            "FILE or --admin-password-env VAR (one of them)"
        )
    if password_env:
        value = os.environ.get(password_env)
        if not value:
            raise LotdeployError(f"the admin password variable {password_env} is not set")
        return Secret(value)
    assert password_file is not None
    try:
        text = read_regular_file(password_file, 64 * 1024).decode("utf-8").strip()
    except (UnreadableFile, UnicodeDecodeError) as exc:
        why = exc.reason if isinstance(exc, UnreadableFile) else "not valid UTF-8"
        raise LotdeployError(f"admin password file {password_file}: {why}") from None
    if not text:
        raise LotdeployError(f"admin password file {password_file} is empty")
    return Secret(text)


def reach(
    targets: tuple[str, ...],
    admin_user: str,
    password_file: Path | None,
    password_env: str | None,
    accept_new_host_keys: bool,
) -> tuple[list[Member], Access, Site | None]:
    """The members to read and how: a site file's nodes over SSH, or addresses directly."""
    from lotdeploy.adopt.survey import DirectAccess, Member, SiteAccess, site_members

    if is_site_file(targets):
        if password_file or password_env:
            raise click.UsageError(
                "--admin-password-file/--admin-password-env go with addresses; a site names "
                "its own (broker.admin_password_file or broker.admin_password_env)"
            )
        site = load(Path(targets[0])).site
        return (
            site_members(site),
            SiteAccess(site, transport_factory(site, accept_new_host_keys)),
            site,
        )
    members: list[Member] = []
    for text in targets:
        host, port = parse_address(text)
        name = text if port != 1883 else host
        if any(m.name == name for m in members):
            raise click.BadParameter(f"{text!r} is given twice")
        members.append(Member(name, host, port))
    password = admin_secret(password_file, password_env)
    return members, DirectAccess(members, admin_user, password), None


def read_cluster(
    targets: tuple[str, ...],
    admin_user: str,
    password_file: Path | None,
    password_env: str | None,
    accept_new_host_keys: bool,
    parallelism: int,
) -> tuple[Survey, Site | None]:
    from lotdeploy.adopt.survey import survey

    members, access, site = reach(
        targets, admin_user, password_file, password_env, accept_new_host_keys
    )
    return survey(members, access, parallelism), site


@click.command()
@target_argument
@click.option("--json", "as_json", is_flag=True, help="Machine-readable findings on stdout.")
@_options(admin_options)
def audit(
    targets: tuple[str, ...],
    as_json: bool,
    admin_user: str,
    admin_password_file: Path | None,
    admin_password_env: str | None,
    accept_new_host_keys: bool,
    parallelism: int,
) -> None:
    """Read every broker of a cluster and report what is wrong: exit 0 clean, 2 findings,
    1 error.

    One finding per line, naming the node and route: peers missing, links one way only,
    duplicate client ids or routes, routes to addresses that are no node, plain-text links,
    mixed credentials, validity differing between a link's directions or unset, links not
    Connected, route code (and its passwords) readable by non-admins, weak passwords.
    Read-only: no broker is changed. No password is ever printed.

    \b
    Examples:
      lotdeploy audit site.yaml
      lotdeploy audit 10.0.0.11 10.0.0.12:1884 --admin-password-file admin.pw --json
    """
    from lotdeploy.adopt.findings import audit as find
    from lotdeploy.adopt.findings import summary
    from lotdeploy.secret import dumps, scrub

    found, _ = read_cluster(
        targets,
        admin_user,
        admin_password_file,
        admin_password_env,
        accept_new_host_keys,
        parallelism,
    )
    findings = find(found)
    if as_json:
        click.echo(
            dumps(
                {
                    "findings": [f.to_json() for f in findings],
                    "errors": found.errors,
                    "nodes": sorted(found.nodes),
                    "routes": sum(len(n.routes) for n in found.nodes.values()),
                    "summary": summary(findings, found),
                }
            )
        )
    else:
        for finding in findings:
            click.echo(scrub(finding.line()))
        for node, error in sorted(found.errors.items()):
            click.echo(scrub(f"node {node}: error: {error}"), err=True)
        click.echo(summary(findings, found))
    if found.errors:
        sys.exit(ExitStatus.ERROR)
    if findings:
        sys.exit(ExitStatus.CHANGES)


__all__ = ["audit", "directory_option"]
