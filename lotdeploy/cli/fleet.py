"""Fleets on the command line: `lotdeploy plan|apply|verify|drift|audit|export-ansible FLEET_DIR`
(the site command, run over every site of a fleet) and `lotdeploy watch SITE|FLEET_DIR`.

The lazy group sends a command here when its SITE argument is a directory (`fleet_target`);
the site command's own options pass through to every site unchanged (`--limit`, `--timeout`,
...), beside the fleet's own: `--parallel`, `--sites`, `--site-timeout`, `--json`.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click

FLEET_HELP = """Run `lotdeploy {name} SITE` on every site of FLEET_DIR ({name} over a fleet).

A fleet is a directory of sites, FLEET_DIR/<name>/site.yaml, each with its own workspace
(settings they share go in a file each site names with `extends:`). Sites run at once, at
most --parallel; one table, one exit status (0 all ok, 2 changes or drift somewhere, 1 any
error). Every other option is passed on to each site's command. Outputs are kept in
FLEET_DIR/.lotdeploy-fleet/runs/.

\b
Example:
  lotdeploy {name} fleet/ --parallel 8
"""


def fleet_target(command: click.Command, args: list[str]) -> Path | None:
    """The command's first positional argument when it is a directory (a fleet), else
    None. Options that take a value are skipped with their value, as click would."""
    takes_value = {
        opt
        for param in command.params
        if isinstance(param, click.Option) and not param.is_flag and not param.count
        for opt in (*param.opts, *param.secondary_opts)
    }
    skip = False
    for word in args:
        if skip:
            skip = False
            continue
        if word == "--":
            continue
        if word.startswith("-"):
            skip = word in takes_value
            continue
        path = Path(word)
        return path if path.is_dir() else None
    return None


def fleet_command(name: str) -> click.Command:
    """`lotdeploy NAME FLEET_DIR [options] [site command options]`."""

    @click.command(
        name,
        help=FLEET_HELP.format(name=name),
        context_settings={
            "ignore_unknown_options": True,
            "allow_extra_args": True,
            "help_option_names": ["-h", "--help"],
        },
    )
    @click.argument("fleet_dir", type=click.Path(file_okay=False, path_type=Path))
    @click.option(
        "--parallel",
        type=click.IntRange(1, 256),
        default=4,
        show_default=True,
        help="Sites run at once.",
    )
    @click.option("--sites", multiple=True, metavar="NAMES", help="Only these sites.")
    @click.option(
        "--site-timeout",
        type=click.FloatRange(1, 86400),
        default=3600,
        show_default=True,
        help="Seconds one site's run may take.",
    )
    @click.option("--json", "as_json", is_flag=True, help="The fleet's result as JSON.")
    @click.option("--auto-approve", is_flag=True, help="apply: no confirmation.")
    @click.pass_context
    def run(
        ctx: click.Context,
        fleet_dir: Path,
        parallel: int,
        sites: tuple[str, ...],
        site_timeout: float,
        as_json: bool,
        auto_approve: bool,
    ) -> None:
        from lotdeploy.fleet import FleetResult, FleetRunner, discover

        chosen = discover(fleet_dir, sites)
        runner = FleetRunner(fleet_dir, parallel, site_timeout)
        extra = list(ctx.args)
        if any(word.split("=", 1)[0] == "--workspace" for word in extra):
            raise click.UsageError(
                "--workspace: each site of a fleet has its own workspace (.lotdeploy/ beside "
                "its site file); one for all would mix their states"
            )
        with _stopped_on_signals(runner):
            if name == "export-ansible":
                result = _export(runner, fleet_dir, chosen, extra)
            elif name == "apply" and not auto_approve:
                result = _apply_confirmed(runner, chosen, extra, as_json)
            else:
                if name == "apply":
                    extra.append("--auto-approve")
                out_dir = runner.run_dir(name)
                result = FleetResult(name, output_dir=out_dir)
                result.runs = runner.run(
                    name, chosen, extra, on_done=_progress(as_json), out_dir=out_dir
                )
        _show(result, as_json)
        ctx.exit(result.status)

    return run


def _progress(as_json: bool) -> Any:
    def done(run: Any) -> None:
        if not as_json:
            click.echo(f"  {run.site}: {run.meaning} ({run.seconds:.1f} s)", err=True)

    return done


def _show(result: Any, as_json: bool) -> None:
    from lotdeploy.secret import dumps

    if as_json:
        click.echo(dumps(result.to_json()))
    else:
        click.echo(result.table(), nl=False)


def _apply_confirmed(runner: Any, sites: list[Any], extra: list[str], as_json: bool) -> Any:
    """Plan every site (saved plans), show them, ask once, apply exactly those plans."""
    from lotdeploy.errors import LotdeployError
    from lotdeploy.fleet import FleetResult

    out_dir = runner.run_dir("apply")
    plans = {s.name: out_dir / f"{s.name}.plan" for s in sites}
    planned = runner.run(
        "plan",
        sites,
        ["--refresh", *_plan_options(extra)],
        site_args=lambda s: [str(s.site_file), "--out", str(plans[s.name])],
        out_dir=out_dir,
    )
    shown = FleetResult("plan", planned, out_dir)
    if shown.status == 1 or any(r.status not in (0, 2) for r in planned):
        return shown
    changing = [s for s, r in zip(sites, planned, strict=True) if r.summary != "no changes"]
    if not changing:
        return shown
    if not as_json:
        click.echo(shown.table(), nl=False)
    if not sys.stdin.isatty():
        raise LotdeployError(
            "apply over a fleet asks for confirmation on a terminal: pass --auto-approve "
            "(the plans are in " + str(out_dir) + ")"
        )
    click.confirm(f"Apply these plans to {len(changing)} site(s)?", abort=True, err=True)
    result = FleetResult("apply", output_dir=out_dir)
    result.runs = runner.run(
        "apply",
        changing,
        [],
        site_args=lambda s: [str(plans[s.name])],
        on_done=_progress(as_json),
        out_dir=out_dir,
    )
    return result


def _plan_options(extra: list[str]) -> list[str]:
    """The options plan shares with apply (the rest are apply's own)."""
    keep, out, skip = {"--limit", "--exclude"}, [], False
    for index, word in enumerate(extra):
        if skip:
            skip = False
            continue
        if word.split("=", 1)[0] in keep:
            out.append(word)
            if "=" not in word and index + 1 < len(extra):
                out.append(extra[index + 1])
                skip = True
    return out


def _export(runner: Any, fleet_dir: Path, sites: list[Any], extra: list[str]) -> Any:
    """export-ansible of a fleet: each site exported into OUT/sites/<name>/ (a project of
    its own), and OUT's README and awx.yml describing the AWX set-up (one job per site)."""
    from lotdeploy.ansible.export import export_fleet_index
    from lotdeploy.errors import LotdeployError
    from lotdeploy.fleet import FleetResult

    if not extra or extra[0].startswith("-"):
        raise LotdeployError("export-ansible FLEET_DIR DIRECTORY: name the directory to write")
    out, options = Path(extra[0]), extra[1:]
    if out.resolve() == fleet_dir.resolve() or fleet_dir.resolve() in out.resolve().parents:
        raise LotdeployError(f"{out}: export into a directory outside the fleet {fleet_dir}")
    result = FleetResult("export-ansible", output_dir=runner.run_dir("export-ansible"))
    result.runs = runner.run(
        "export-ansible",
        sites,
        options,
        site_args=lambda s: [str(s.site_file), str((out / "sites" / s.name).resolve())],
        json_output=False,
        out_dir=result.output_dir,
    )
    if result.status == 0:
        export_fleet_index(out, [s.name for s in sites])
    return result


class _stopped_on_signals:
    """SIGTERM (and Ctrl-C) stop every site's run before the fleet command ends."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.previous: Any = None

    def __enter__(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            self.runner.stop()
            raise KeyboardInterrupt

        self.previous = signal.signal(signal.SIGTERM, handler)

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        signal.signal(signal.SIGTERM, self.previous)
        if isinstance(exc, KeyboardInterrupt):
            self.runner.stop()


@click.command()
@click.argument("target", required=False, type=click.Path(path_type=Path))
@click.option(
    "--interval",
    type=click.FloatRange(1, 86400),
    default=60,
    show_default=True,
    help="Seconds between a site's cycles.",
)
@click.option(
    "--jitter",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="Random extra delay, as a share of the interval.",
)
@click.option(
    "--parallel",
    type=click.IntRange(1, 256),
    default=4,
    show_default=True,
    help="Sites cycled at once.",
)
@click.option(
    "--heal", is_flag=True, help="Apply what restores drift (never a change of the site itself)."
)
@click.option(
    "--metrics-address",
    default="127.0.0.1:9473",
    show_default=True,
    metavar="HOST:PORT",
    help="Where /metrics is served (port 0: any free port; the start event names it).",
)
@click.option("--sites", multiple=True, metavar="NAMES", help="Only these sites of a fleet.")
@click.option("--once", is_flag=True, help="One cycle per site, then exit (cron).")
@click.option(
    "--log",
    "log_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Append the JSON events to FILE (default: stdout).",
)
@click.option("--systemd-unit", is_flag=True, help="Print the systemd unit file and exit.")
def watch(
    target: Path | None,
    interval: float,
    jitter: float,
    parallel: int,
    heal: bool,
    metrics_address: str,
    sites: tuple[str, ...],
    once: bool,
    log_file: Path | None,
    systemd_unit: bool,
) -> None:
    """Keep a site (or every site of FLEET_DIR) as applied: drift, verify, metrics, --heal.

    Every --interval seconds (plus jitter) each site is read live (`drift`), healed with
    --heal (an apply of exactly the drift's restores, refused when the site itself has
    changes not applied), and verified. Prometheus metrics on http://HOST:PORT/metrics
    (loopback by default); one JSON event per line. SIGTERM stops it cleanly.

    \b
    Example:
      LOTDEPLOY_PASSPHRASE=... lotdeploy watch fleet/ --interval 60 --heal
    """
    from lotdeploy.errors import LotdeployError
    from lotdeploy.fleet import FleetSite, discover
    from lotdeploy.watch import UNIT_FILE, Watcher, serve_metrics

    if systemd_unit:
        click.echo(UNIT_FILE.read_text(), nl=False)
        return
    if target is None:
        raise click.UsageError("Missing argument 'TARGET' (a site file or a fleet directory).")
    if target.is_dir():
        chosen = discover(target, sites)
        base = target
    elif target.is_file():
        chosen, base = [FleetSite(target.parent.name or "site", target)], target.parent
    else:
        raise LotdeployError(f"{target}: no such site file or fleet directory")
    host, _, port_text = metrics_address.rpartition(":")
    if not host or not port_text.isdigit() or int(port_text) > 65535:
        raise LotdeployError(f"--metrics-address {metrics_address!r}: give HOST:PORT")
    out = open(log_file, "a", encoding="utf-8") if log_file else sys.stdout  # noqa: SIM115
    watcher = Watcher(
        chosen, base, interval=interval, jitter=jitter, parallel=parallel, heal=heal, out=out
    )
    try:
        server = serve_metrics(watcher, host.strip("[]"), int(port_text))
    except OSError as exc:
        raise LotdeployError(f"cannot serve metrics on {metrics_address}: {exc.strerror}") from None
    watcher.event("metrics", address=f"{host}:{server.server_address[1]}")
    previous = signal.signal(signal.SIGTERM, lambda *_: watcher.stop())
    try:
        watcher.run(once=once)
    except KeyboardInterrupt:
        watcher.stop()
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.shutdown()
        server.server_close()
        if log_file:
            out.close()
