"""What the `lotdeploy` command line offers, as plain data (no click): each command's name,
where it lives and its one-line help, and the top-level help text.

`app.py` builds the click group from this table, and `fasthelp.py` answers `--help` from it
without importing click; a test checks that both print the same.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing alone costs --help a third of its time
if TYPE_CHECKING:
    import click


class LazyCommand:
    """Where a command lives (`package.module:attribute`) and the line `--help` shows for it.

    A plain class, not a dataclass or NamedTuple: `dataclasses` or `typing` alone would cost
    `--help` a good part of its start-up time.
    """

    __slots__ = ("import_path", "short_help")

    def __init__(self, import_path: str, short_help: str) -> None:
        self.import_path = import_path
        self.short_help = short_help

    def __repr__(self) -> str:
        return f"LazyCommand({self.import_path!r}, {self.short_help!r})"

    def load(self) -> click.Command:
        import importlib

        import click

        module_name, _, attribute = self.import_path.partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.import_path} is not a click command")
        return command


ROOT_HELP = """Compile, plan and deploy Coreflux MQTT_CLUSTER meshes from one site spec.

\b
Example:
  lotdeploy init mysite && lotdeploy plan mysite/site.yaml
"""

COMMANDS = {
    "init": LazyCommand(
        "lotdeploy.cli.core:init",
        "Write a commented example site.yaml (two regions, TLS on) into DIRECTORY.",
    ),
    "validate": LazyCommand(
        "lotdeploy.cli.core:validate",
        "Check a site spec; print a one-line summary or every error (file:line:col).",
    ),
    "render": LazyCommand(
        "lotdeploy.cli.core:render",
        "Write each node's bundle to OUT/<node>/: routes.lot, TLS files, manifest.json.",
    ),
    "plan": LazyCommand(
        "lotdeploy.cli.core:plan",
        "Show what deploying the site would change, grouped site → region → node.",
    ),
    "apply": LazyCommand(
        "lotdeploy.cli.deploy:apply",
        "Make every node run what the site describes: files, broker users, routes.",
    ),
    "rollback": LazyCommand(
        "lotdeploy.cli.rollout:rollback",
        "Put nodes back on an earlier release: files, TLS files, routes, users; then check it.",
    ),
    "drift": LazyCommand(
        "lotdeploy.cli.deploy:drift",
        "Compare what the nodes run with what was applied: exit 0 clean, 2 drift, 1 error.",
    ),
    "doctor": LazyCommand(
        "lotdeploy.cli.deploy:doctor",
        "Ask each node's broker which of lotdeploy's assumptions hold for it, and record it.",
    ),
    "status": LazyCommand(
        "lotdeploy.cli.inspect:status",
        "Ask each node's broker which routes it runs, and whether each is connected.",
    ),
    "verify": LazyCommand(
        "lotdeploy.cli.verify:verify",
        "Prove every node runs what was applied and every link carries messages.",
    ),
    "force-unlock": LazyCommand(
        "lotdeploy.cli.deploy:force_unlock",
        "Break the workspace lock of a run that hangs (LOCK_ID as the refusal showed it).",
    ),
    "audit": LazyCommand(
        "lotdeploy.cli.adopt:audit",
        "Read every broker of a cluster and report what is wrong: exit 0 clean, 2 findings, "
        "1 error.",
    ),
    "import": LazyCommand(
        "lotdeploy.cli.adopt:import_cluster",
        "Write a site spec and a workspace that reproduce a running cluster.",
    ),
    "takeover": LazyCommand(
        "lotdeploy.cli.adopt:takeover",
        "Move an imported cluster to TLS, a generated password and lotdeploy's names, phased.",
    ),
    "lint": LazyCommand(
        "lotdeploy.cli.core:lint",
        "Parse LOT files and check their routes; errors as FILE:LINE:COL: message.",
    ),
    "schema": LazyCommand(
        "lotdeploy.cli.core:schema", "Print the site spec's JSON Schema (for editors and CI)."
    ),
    "graph": LazyCommand(
        "lotdeploy.cli.core:graph",
        "Print the topology: nodes grouped by region, links labelled with their validity.",
    ),
    "certs": LazyCommand(
        "lotdeploy.cli.pki:certs", "Cluster PKI: the site CA and one certificate per TLS node."
    ),
    "creds": LazyCommand(
        "lotdeploy.cli.pki:creds",
        "The shared cluster credential (user and password the routes carry).",
    ),
    "inventory": LazyCommand(
        "lotdeploy.cli.ansible:inventory",
        "Print the site as an Ansible YAML inventory: groups per region, site and tag.",
    ),
    "export-ansible": LazyCommand(
        "lotdeploy.cli.ansible:export_ansible",
        "Write inventory, playbooks, bundles and a README into DIRECTORY for plain Ansible.",
    ),
    "ansible-runs": LazyCommand(
        "lotdeploy.cli.ansible:ansible_runs",
        "List the ansible-runner runs of this site's workspace and where their artifacts are.",
    ),
    "watch": LazyCommand(
        "lotdeploy.cli.fleet:watch",
        "Keep a site (or every site of FLEET_DIR) as applied: drift, verify, metrics, --heal.",
    ),
    "lab": LazyCommand(
        "lotdeploy.cli.lab:lab",
        "A real multi-region Coreflux-compatible cluster on this machine, to rehearse on.",
    ),
}

#: Commands that run over a fleet when their SITE argument is a directory of sites
#: (lotdeploy.cli.fleet); `audit` joins as soon as it is in COMMANDS.
FLEET_COMMANDS = frozenset({"plan", "apply", "verify", "drift", "audit", "export-ansible"})
