"""`lotdeploy lab ...`: thin click wrappers over `lotdeploy.lab.control`, and `lab broker`.

`lab broker` is imported only when it runs (it needs amqtt, from the `lab` extra). Errors are
LabErrors, printed by the entry point like every other error; an OSError the operator can
cause (a lab directory we may not write) becomes one too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from lotdeploy.cli.lazy import LazyCommand, LazyGroup
from lotdeploy.cli.term import print_table
from lotdeploy.errors import LabError
from lotdeploy.lab import control, labstate, netns

LAB_COMMANDS = {
    "broker": LazyCommand(
        "lotdeploy.cli.lab_broker:broker",
        "Run one Coreflux-compatible lab broker in the foreground.",
    ),
}


@click.group(cls=LazyGroup, lazy_commands=LAB_COMMANDS)
def lab() -> None:
    """A real multi-region Coreflux-compatible cluster on this machine, to rehearse on.

    \b
    Example:
      lotdeploy lab up --regions eu:2,us:1 && lotdeploy plan lab/site.yaml
    """


DIR_HELP = "the lab directory (default ./lab); several labs can coexist in different dirs"


def _dir_option(fn: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--dir",
        "lab_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("lab"),
        show_default=True,
        help=DIR_HELP,
    )(fn)


@contextmanager
def _lab_errors() -> Iterator[None]:
    """An OSError the operator can cause becomes a one-line LabError, never a traceback."""
    try:
        yield
    except OSError as exc:
        raise LabError(f"{exc.filename or 'lab'}: {exc.strerror or exc}") from None


@lab.command("up")
@click.option("--nodes", type=int, default=None, help="N nodes node1..nodeN in one region")
@click.option("--regions", default=None, help="nodes per region, e.g. eu:2,us:2 -> eu1 eu2 us1 us2")
@_dir_option
@click.option(
    "--delay",
    "delays",
    multiple=True,
    metavar="REGION=MS",
    help="ingress latency into a region from other regions (repeatable)",
)
@click.option(
    "--mode",
    type=click.Choice(["auto", "root", "user"]),
    default="auto",
    show_default=True,
    help="root: namespaces; user: loopback + proxy (no root)",
)
@click.option(
    "--pool",
    default=netns.DEFAULT_POOL,
    show_default=True,
    help="root mode: address pool to take the lab's /24 from",
)
@click.option(
    "--dialect",
    "dialects",
    multiple=True,
    metavar="NODE=WORDS",
    help="the broker dialect a node (or region) plays, comma-separated: json|text, "
    "echo|no-echo (requestId), reject|overwrite (re-added route), without-KEY (a "
    "CLUSTER_CONFIG key it lacks), exact-verbs, cluster-seed|cluster-coreflux (monitoring "
    "topics), no-version, connack-5, no-secrets, named-rights; e.g. "
    "eu2=text,no-echo,overwrite (repeatable; docs/lab-broker.md)",
)
@click.option(
    "--profile",
    "profiles",
    multiple=True,
    metavar="[NODE=]PROFILE",
    help="root mode: lay a node (or region, or every node) out as the broker's install "
    "PROFILE says: systemd (default) or docker (the official image's volume paths and a "
    "stand-in `docker` command that restarts the node's broker), e.g. eu2=docker "
    "(repeatable; docs/lab.md)",
)
@click.option(
    "--fixture",
    type=click.Choice(["vendor-example", "messy"]),
    default=None,
    help="plant a hand-made cluster on the brokers (3 nodes): the vendor page's example, "
    "or one with every problem `lotdeploy audit` finds (docs/lab.md)",
)
def up(
    nodes: int | None,
    regions: str | None,
    lab_dir: Path,
    delays: tuple[str, ...],
    mode: str,
    pool: str,
    dialects: tuple[str, ...],
    profiles: tuple[str, ...],
    fixture: str | None,
) -> None:
    """Create a lab cluster and write DIR/site.yaml to plan and render for.

    Each node gets its own address, sshd (key-only, strict host keys) and lab broker.
    Idempotent: re-running on a lab of the same shape changes nothing.

    --dialect makes a node's broker answer as another broker version would (for apply and
    doctor rehearsals), e.g. --dialect node2=text,no-echo,overwrite.

    --profile eu2=docker runs eu2 in the docker layout: files in the project volume, the
    broker reading them at the container's paths, reloaded by `docker restart`.

    --fixture plants a hand-made cluster (routes, users) on the brokers, to audit and
    import: vendor-example or messy (3 nodes).

    Example: lotdeploy lab up --regions eu:2,us:1 --delay us=80
    """
    with _lab_errors():
        shape = labstate.parse_shape(nodes, regions)
        control.up(
            lab_dir,
            shape,
            labstate.parse_delays(delays),
            mode=None if mode == "auto" else mode,
            pool=pool,
            echo=click.echo,
            dialects=labstate.parse_dialects(dialects, shape),
            profiles=labstate.parse_profiles(profiles, shape),
            fixture=fixture,
        )


@lab.command("down")
@_dir_option
def down(lab_dir: Path) -> None:
    """Remove everything the lab made: processes, namespaces, links, rules, files.

    Works after a crashed or half-finished `up` too.

    Example: lotdeploy lab down --dir ./lab
    """
    with _lab_errors():
        control.down(lab_dir, echo=click.echo)


@lab.command("status")
@_dir_option
def status(lab_dir: Path) -> None:
    """One line per node: node, address, region, sshd, broker, delay, cut.

    Example: lotdeploy lab status
    """
    with _lab_errors():
        rows = control.status_rows(lab_dir)
    cols = ["node", "address", "region", "sshd", "broker", "delay", "cut"]
    print_table([c.upper() for c in cols], [[row[c] for c in cols] for row in rows])


@lab.command("delay")
@click.argument("target", metavar="NODE|REGION")
@click.argument("ms", metavar="MS")
@_dir_option
def delay(target: str, ms: str, lab_dir: Path) -> None:
    """Delay traffic into a node (from everywhere) or a region (from other regions) by MS.

    0 removes the delay. The delay is one way (ingress): a region pair with 40 ms each has
    an 80 ms round trip.

    Example: lotdeploy lab delay us 80
    """
    with _lab_errors():
        names = control.set_delay(lab_dir, target, labstate.parse_ms(ms))
    click.echo(f"delay {ms} ms into {', '.join(names)}")


@lab.command("cut")
@click.argument("node")
@_dir_option
def cut(node: str, lab_dir: Path) -> None:
    """Cut a node off: every connection to or from it fails at once (until `heal`).

    Example: lotdeploy lab cut eu2
    """
    with _lab_errors():
        control.set_cut(lab_dir, node, True)
    click.echo(f"{node} cut off")


@lab.command("heal")
@click.argument("node")
@_dir_option
def heal(node: str, lab_dir: Path) -> None:
    """Undo `cut` and every partition involving NODE.

    Example: lotdeploy lab heal eu2
    """
    with _lab_errors():
        control.set_cut(lab_dir, node, False)
    click.echo(f"{node} healed")


@lab.command("kill")
@click.argument("node")
@_dir_option
def kill(node: str, lab_dir: Path) -> None:
    """Kill NODE's lab broker at once (SIGKILL), as when a broker host fails.

    Its clients and its peers' routes see their connections drop; sshd stays up.

    Example: lotdeploy lab kill eu2   (back: lotdeploy lab revive eu2)
    """
    with _lab_errors():
        pid = control.kill_broker(lab_dir, node)
    click.echo(f"{node}: lab broker (pid {pid}) killed")


@lab.command("revive")
@click.argument("node")
@_dir_option
def revive(node: str, lab_dir: Path) -> None:
    """Start NODE's lab broker again after `kill` (its routes come back from its state).

    Example: lotdeploy lab revive eu2
    """
    with _lab_errors():
        pid = control.revive_broker(lab_dir, node)
    click.echo(f"{node}: lab broker running again (pid {pid})")


@lab.command("partition")
@click.argument("a")
@click.argument("b")
@_dir_option
def partition(a: str, b: str, lab_dir: Path) -> None:
    """Cut only the links between nodes A and B (both keep every other link).

    Example: lotdeploy lab partition eu1 us1   (undo: lotdeploy lab heal eu1)
    """
    with _lab_errors():
        control.partition(lab_dir, a, b)
    click.echo(f"{a} and {b} partitioned")


@lab.command("ssh", context_settings={"ignore_unknown_options": True})
@_dir_option
@click.argument("node")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh(lab_dir: Path, node: str, command: tuple[str, ...]) -> None:
    """Open a shell on NODE, or run CMD there, with the lab key and strict host key checks.

    Example: lotdeploy lab ssh eu1 hostname -I
    """
    with _lab_errors():
        argv = control.ssh_argv(lab_dir, node, list(command))
    os.execv(argv[0], argv)
