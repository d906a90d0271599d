"""`lotdeploy audit`, `lotdeploy import`, `lotdeploy takeover`: the clusters operators already
have (docs/adopt.md).

audit and import take a site file (the brokers reached over SSH, as `status` does) or an
ad hoc list of `address[:port]` (reached directly, with the admin's password from a file
or an environment variable: never on the command line). Both only read the brokers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lotdeploy.cli.common import directory_option, load
from lotdeploy.errors import LotdeployError
from lotdeploy.exitstatus import ExitStatus

if TYPE_CHECKING:
    from lotdeploy.adopt.survey import Access, Member, Survey
    from lotdeploy.model import Site
    from lotdeploy.secret import Secret

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
    from lotdeploy.spec.schema import host_address  # the rule the spec applies to `address`

    try:
        host = host_address(host)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: {host} {exc}") from None
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
    from lotdeploy.transport import transport_factory

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


def _pairs(items: tuple[str, ...], what: str) -> dict[str, str]:
    """`KEY=VALUE[,KEY=VALUE]` items (repeatable) -> {KEY: VALUE}."""
    out: dict[str, str] = {}
    for item in items:
        for part in item.split(","):
            key, sep, value = part.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise click.BadParameter(f"{part!r}: expected {what}")
            out[key.strip()] = value.strip()
    return out


def _regions(items: tuple[str, ...]) -> dict[str, str]:
    """`REGION=TARGET[,TARGET...]` items -> {target: region}."""
    out: dict[str, str] = {}
    for item in items:
        region, sep, targets = item.partition("=")
        names = [t.strip() for t in targets.split(",") if t.strip()]
        if not sep or not region.strip() or not names:
            raise click.BadParameter(f"{item!r}: expected REGION=ADDRESS|CIDR|NAME[,...]")
        for target in names:
            out[target] = region.strip()
    return out


@click.command("import")
@target_argument
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The site spec to write; its workspace is .lotdeploy/ beside it (or --workspace).",
)
@click.option(
    "--workspace",
    "workspace_dir",
    type=click.Path(file_okay=False),
    default=None,
    callback=directory_option,
    help="Workspace directory for the new site (default: .lotdeploy/ beside --out).",
)
@click.option(
    "--name",
    "names",
    multiple=True,
    metavar="ADDRESS=NAME",
    help="With addresses: the node name of an address (default: what the client ids say, "
    "`Node1-to-Node2`, else node1..).",
)
@click.option(
    "--region",
    "regions",
    multiple=True,
    metavar="REGION=ADDRESS|CIDR|NAME[,...]",
    help="With addresses: the nodes of a region, by address, network or node name "
    "(repeatable), e.g. eu=10.0.0.0/24; the others go in region `default`.",
)
@click.option(
    "--site-name",
    default="imported",
    show_default=True,
    help="With addresses: the `site:` of the spec written.",
)
@click.option(
    "--keep-strays",
    is_flag=True,
    help="Leave routes to addresses that are no node alone (default: they are taken over "
    "over and the plan removes them).",
)
@_options(admin_options)
def import_cluster(
    targets: tuple[str, ...],
    out: Path,
    workspace_dir: Path | None,
    names: tuple[str, ...],
    regions: tuple[str, ...],
    site_name: str,
    keep_strays: bool,
    admin_user: str,
    admin_password_file: Path | None,
    admin_password_env: str | None,
    accept_new_host_keys: bool,
    parallelism: int,
) -> None:
    """Write a site spec and a workspace that reproduce a running cluster.

    Reads every broker (as `audit` does; nothing is changed), then writes OUT: the nodes,
    their regions, TLS and ports, the cluster user, validity per link class and per link
    where they differ; and its workspace: the hand-made routes adopted under their names and
    client ids (managed in place from now on), the duplicates and strays it
    is to remove, the routes' password kept encrypted (needs LOTDEPLOY_PASSPHRASE or a
    prompt). The first `lotdeploy plan` then shows no route change for a consistent
    cluster, and what `audit` found as changes for an inconsistent one.

    \b
    Examples:
      lotdeploy import lab/site.yaml --out plant/site.yaml
      lotdeploy import 10.0.0.11 10.0.0.12 10.0.0.13 --admin-password-file admin.pw \\
          --region eu=10.0.0.0/24 --out plant/site.yaml
    """
    from lotdeploy.adopt.importer import write_import
    from lotdeploy.cli.common import open_workspace
    from lotdeploy.secret import scrub

    if is_site_file(targets) and (names or regions):
        raise click.UsageError("--name/--region go with addresses; a site names its nodes")
    found, site = read_cluster(
        targets,
        admin_user,
        admin_password_file,
        admin_password_env,
        accept_new_host_keys,
        parallelism,
    )
    admin: dict[str, Any] = {}
    if site is None:
        admin = {"admin_user": admin_user}
        if admin_password_env:
            admin["admin_password_env"] = admin_password_env
        elif admin_password_file is not None:
            admin["admin_password_file"] = os.path.relpath(
                admin_password_file.resolve(), out.resolve().parent
            )
    workspace = open_workspace(out, workspace_dir)
    with workspace.lock("import"):
        result = write_import(
            found,
            out,
            workspace,
            input_site=site,
            input_file=Path(targets[0]) if site is not None else None,
            names=_pairs(names, "ADDRESS=NAME"),
            regions=_regions(regions),
            site_name=site_name,
            keep_strays=keep_strays,
            admin=admin,
        )
    for line in result.lines():
        click.echo(scrub(line))


@click.command()
@click.argument("site", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--workspace",
    "workspace_dir",
    type=click.Path(file_okay=False),
    default=None,
    callback=directory_option,
    help="Workspace directory (default: .lotdeploy/ beside the site file).",
)
@click.option(
    "--password",
    type=click.Choice(["generate", "keep"]),
    default="generate",
    show_default=True,
    help="generate: replace the typed password an import took over by a generated one (a "
    "new cluster user); keep: leave it.",
)
@click.option(
    "--rename",
    is_flag=True,
    help="Also move the adopted routes to lotdeploy's names and client ids (each new route "
    "is Connected before the old one goes; docs/adopt.md says what that costs).",
)
@click.option("--auto-approve", is_flag=True, help="Do not ask before each phase.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines on stdout.")
@click.option(
    "--connect-timeout",
    type=click.FloatRange(0, 600),
    default=15.0,
    show_default=True,
    help="Seconds a node's changed routes may take to report Connected.",
)
@click.option("--accept-new-host-keys", is_flag=True, help="Accept unknown SSH host keys.")
@click.option(
    "--parallelism",
    type=click.IntRange(1, 200),
    default=10,
    show_default=True,
    help="Nodes worked on at once.",
)
def takeover(
    site: Path,
    workspace_dir: Path | None,
    password: str,
    rename: bool,
    auto_approve: bool,
    as_json: bool,
    connect_timeout: float,
    accept_new_host_keys: bool,
    parallelism: int,
) -> None:
    """Move an imported cluster to TLS, a generated password and lotdeploy's names, phased.

    Set `tls: true` in the site for the nodes to move to TLS first. The take-over runs
    three phases, each rolled out wave by wave with the verify gate after each wave (as
    `apply` with a rollout; a failed wave is rolled back): 1 every broker accepts the new
    user and opens TLS beside plain, 2 the routes switch to them (and, with --rename, to
    lotdeploy's names), 3 the old user goes. No phase requires what a node of an earlier
    wave does not accept yet, so no link is refused at any moment. Run it again to go on
    after a stop.

    \b
    Example:
      lotdeploy takeover plant/site.yaml --auto-approve
    """
    from datetime import UTC, datetime

    from lotdeploy.adopt.takeover import (
        advance,
        mark_applied,
        phase_of,
        phase_words,
        plan_work,
        replace_in_place,
        running,
        start,
        work_kinds,
    )
    from lotdeploy.cli.common import bind, node_sessions, open_workspace
    from lotdeploy.cli.deploy import Progress, _confirm, _refresh
    from lotdeploy.cli.rolling import apply_rollout
    from lotdeploy.cli.term import interactive
    from lotdeploy.plan.make import make_plan
    from lotdeploy.plan.text import iter_text
    from lotdeploy.secret import dumps, scrub
    from lotdeploy.state import StateStore
    from lotdeploy.transport import chosen

    loaded = load(site)
    workspace = open_workspace(site, workspace_dir)

    def say(text: str, **event: Any) -> None:
        if as_json:
            click.echo(dumps({"event": "takeover", **event, "detail": text}))
        else:
            click.echo(scrub(text))

    with workspace.lock("takeover"):
        state = StateStore(workspace).read()
        the_site = bind(loaded, workspace)
        phase = phase_of(state)
        resume = state.rollout is not None and state.rollout.status in ("paused", "running")
        if phase is None:
            if not state.adopted and not state.credential_adopted:
                raise LotdeployError(
                    "this workspace holds no imported cluster: `lotdeploy import` it first "
                    "(a cluster lotdeploy built needs no take-over)"
                )
            work = plan_work(the_site, state, password == "generate", rename)
            if not work:
                say(
                    "Nothing to take over: the cluster runs what the site and lotdeploy's "
                    "conventions say (set `tls: true` in the site to move it to TLS).",
                    status="none",
                )
                return
            say("Take-over: " + "; ".join(work.lines()), status="start")
            for number in (1, 2, 3):
                say(f"  phase {number}: {phase_words(number, work_kinds(work))}", phase=number)
            lossy = sorted(n for n, ok in replace_in_place(state).items() if not ok)
            if lossy and not work.rename:
                say(
                    f"note: the brokers of {', '.join(lossy)} refuse a re-added route, or "
                    "are not known to replace one (`lotdeploy doctor` asks): phase 2 may "
                    "remove each changed route there, then add it, and what is published in "
                    "between does not reach that peer; "
                    "with --rename each new route is added before the old one goes "
                    "(duplicates instead of losses: docs/adopt.md)",
                    status="note",
                )
            _confirm(auto_approve)
            start(the_site, workspace, work, datetime.now(UTC))
            phase = 1
        else:
            say(f"Take-over under way: going on with phase {phase}", status="resume")
            _confirm(auto_approve)
        nodes = [n.name for n in the_site.nodes]
        while phase is not None:
            current = StateStore(workspace).read()
            words = phase_words(phase, list(running(current)))
            say(f"== take-over phase {phase} of 3: {words}", phase=phase, status="start")
            lossy = sorted(n for n, ok in replace_in_place(current).items() if not ok)
            if phase == 2 and lossy and "names" not in running(current):
                say(
                    f"note: the brokers of {', '.join(lossy)} refuse a re-added route or "
                    "are not known to replace one: each route this phase changes there may "
                    "be removed, then added, and what is "
                    "published on the node in between does not reach that peer (a take-over "
                    "with --rename adds each new route before the old one goes: "
                    "docs/adopt.md)",
                    phase=phase,
                    status="note",
                )
            the_site = bind(loaded, workspace)
            # each phase binds the site anew (its credentials move), so its own sessions
            with node_sessions(the_site, accept_new_host_keys) as sessions:
                live = _refresh(the_site, workspace, sessions, parallelism, None, as_json)
                fresh = make_plan(the_site, workspace, refresh=live)
                fresh.workspace_id = workspace.identity(create=True)
                if not as_json:
                    for piece in iter_text(fresh, colour=interactive()):
                        click.echo(scrub(piece), nl=False)
                code = apply_rollout(
                    the_site,
                    workspace,
                    None,
                    as_json,
                    parallelism,
                    accept_new_host_keys,
                    None,
                    resume,
                    fresh,
                    lambda: None,  # asked once, before the first phase
                    Progress,
                    live,
                    sessions,
                    chosen(the_site),
                    connect_timeout,
                )
            resume = False
            if code:
                say(
                    f"take-over stopped in phase {phase}: its rollout did not complete (see "
                    f"above); put right what stopped it, then `lotdeploy takeover {site}` "
                    "goes on",
                    phase=phase,
                    status="fail",
                )
                sys.exit(code)
            mark_applied(workspace, nodes)
            done = phase
            phase = advance(the_site, workspace, datetime.now(UTC))
            say(f"== take-over phase {done} of 3: done", phase=done, status="ok")
        bind(loaded, workspace)
    say("Take-over complete: every node runs what the site says, the lotdeploy way.", status="done")


__all__ = ["audit", "import_cluster", "takeover"]
