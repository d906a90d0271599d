"""The shape of the command line: lazy loading, what start-up imports, one error style, exit
statuses, the lab extra, log scrubbing, and click staying inside lotdeploy/cli/."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from lotdeploy.exitstatus import ExitStatus
from lotdeploy.lab.extras import MISSING_LAB_EXTRA
from tests.conftest import REPO, run_cli

PACKAGE = REPO / "lotdeploy"
#: Top-level packages `--help`, `--version` and `validate` must not import.
HEAVY = {"amqtt", "aiomqtt", "paho", "cryptography", "rich", "jinja2", "fnfqueue", "lark"}


def _modules_after(*argv: str) -> tuple[set[str], str]:
    """Run the real CLI with `argv` in a fresh interpreter; the modules it had imported."""
    probe = (
        "import json, sys\n"
        "from lotdeploy.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=60
    )
    return set(json.loads(result.stderr.strip().splitlines()[-1])), result.stdout


@pytest.mark.parametrize(
    "argv", [("--help",), ("--version",), ("validate", str(REPO / "inventories" / "plant-a.yaml"))]
)
def test_startup_imports_nothing_heavy(argv: tuple[str, ...]) -> None:
    modules, stdout = _modules_after(*argv)
    assert stdout, "the command printed nothing"
    top_level = {m.split(".")[0] for m in modules}
    assert not top_level & HEAVY, sorted(top_level & HEAVY)
    assert not {m for m in modules if m.startswith("lotdeploy.lab")}
    assert not {m for m in modules if m.startswith(("lotdeploy.pki", "lotdeploy.compiler"))}
    if argv[0].startswith("--"):  # the spec (pydantic) only when a site is read
        assert "pydantic" not in top_level and "lotdeploy.spec" not in modules


def test_top_level_help_lists_every_command_without_importing_it() -> None:
    from lotdeploy.cli.app import COMMANDS

    modules, stdout = _modules_after("--help")
    for name, entry in COMMANDS.items():
        assert f"  {name} " in stdout, name
        assert entry.import_path.partition(":")[0] not in modules
    assert "Example" in stdout


def test_lazy_help_lines_match_the_commands() -> None:
    """The table in app.py/lab.py says what each command's own docstring says."""
    from lotdeploy.cli.app import COMMANDS
    from lotdeploy.cli.lab import LAB_COMMANDS

    for name, entry in {**COMMANDS, **LAB_COMMANDS}.items():
        command = entry.load()
        assert command.get_short_help_str(limit=300) == entry.short_help, name


def test_lab_help_does_not_import_the_broker() -> None:
    modules, stdout = _modules_after("lab", "--help")
    assert "broker" in stdout and "Run one Coreflux-compatible lab broker" in stdout
    assert "amqtt" not in {m.split(".")[0] for m in modules}
    assert "lotdeploy.lab.broker.server" not in modules


def test_no_help_names_a_command_that_does_not_exist() -> None:
    import re

    from click.testing import CliRunner

    from lotdeploy.cli import cli
    from lotdeploy.cli.table import COMMANDS
    from tests.test_cli import _all_commands

    for path in _all_commands():
        text = CliRunner().invoke(cli, [*path, "--help"]).output
        for named in re.findall(r"lotdeploy ([a-z][a-z-]*)", text):
            assert named in COMMANDS, (path, named)


def test_exit_statuses() -> None:
    assert {s.name: int(s) for s in ExitStatus} == {
        "OK": 0,
        "ERROR": 1,
        "CHANGES": 2,
        "INTERNAL": 70,
        "INTERRUPTED": 130,
    }
    readme = (REPO / "README.md").read_text()
    for status in ExitStatus:
        assert f"- `{int(status)}` {status.name}: " in readme, status


def test_lab_errors_use_the_one_error_style(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lotdeploy.lab", "status", "--dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == ExitStatus.ERROR
    assert result.stderr.startswith("lotdeploy: error: no lab in "), result.stderr
    assert "Error:" not in result.stderr


def test_usage_errors_use_the_one_error_style() -> None:
    result = run_cli("validate")
    assert result.returncode == ExitStatus.ERROR
    assert result.stderr.splitlines()[-1] == "lotdeploy: error: Missing argument 'SITE'."
    assert result.stderr.startswith("Usage: lotdeploy validate")
    bare = run_cli()  # a group without a command shows its help, not an error line
    assert bare.returncode == ExitStatus.ERROR and "Commands:" in bare.stderr
    assert "lotdeploy: error" not in bare.stderr


def _without_lab_extra(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real CLI in an interpreter where amqtt and fnfqueue cannot be imported."""
    probe = (
        "import sys\n"
        "sys.modules['amqtt'] = None\n"
        "sys.modules['fnfqueue'] = None\n"
        "from lotdeploy.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    return subprocess.run(
        [sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=60, cwd=cwd
    )


@pytest.mark.parametrize(
    "argv",
    [
        ("lab", "broker", "--bind", "127.0.0.1", "--port", "0"),
        ("lab", "up", "--nodes", "1", "--dir", "lab"),
    ],
)
def test_missing_lab_extra_is_one_clear_line(tmp_path: Path, argv: tuple[str, ...]) -> None:
    result = _without_lab_extra(*argv, cwd=tmp_path)
    assert result.returncode == ExitStatus.ERROR
    assert result.stderr == f"lotdeploy: error: {MISSING_LAB_EXTRA}\n"
    assert MISSING_LAB_EXTRA == "the lab needs extra packages: pip install 'lotdeploy[lab]'"
    assert not (tmp_path / "lab").exists()


def test_lab_broker_help_works_without_the_extra(tmp_path: Path) -> None:
    result = _without_lab_extra("lab", "broker", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "Example" in result.stdout


def test_log_lines_of_a_cli_run_are_scrubbed(tmp_path: Path) -> None:
    """A layer that logs a secret's value during a real command: the handler scrubs it."""
    site = tmp_path / "site.yaml"
    site.write_text((REPO / "inventories" / "plant-a.yaml").read_text())
    value = "a-very-secret-cluster-password-42"
    probe = (
        "import logging, sys\n"
        "import lotdeploy.spec as spec\n"
        "from lotdeploy.secret import Secret\n"
        f"secret = Secret({value!r})\n"
        "original = spec.load_site\n"
        "def load_site(path):\n"
        "    logging.getLogger('lotdeploy.spec').warning('loading with %s', secret.reveal())\n"
        "    return original(path)\n"
        "spec.load_site = load_site\n"
        "from lotdeploy.cli import main\n"
        "main(['validate', sys.argv[1]])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(site)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "loading with (sensitive)" in result.stderr
    assert value not in result.stdout + result.stderr


# -- where click lives --------------------------------------------------------------------------

#: Modules allowed to import click outside lotdeploy/cli/ (none).
CLICK_OUTSIDE_CLI_PENDING: set[str] = set()


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def _sources() -> list[tuple[str, Path]]:
    return sorted((str(p.relative_to(REPO)), p) for p in PACKAGE.rglob("*.py"))


def test_click_only_in_the_cli_package() -> None:
    for rel, path in _sources():
        if rel.startswith("lotdeploy/cli/") or rel in CLICK_OUTSIDE_CLI_PENDING:
            continue
        assert not {m for m in _imports(path) if m.split(".")[0] == "click"}, rel


def test_only_entry_points_import_the_cli() -> None:
    for rel, path in _sources():
        if rel.startswith("lotdeploy/cli/") or path.name == "__main__.py":
            continue
        assert not {m for m in _imports(path) if m.startswith("lotdeploy.cli")}, rel


def test_python_m_launchers(tmp_path: Path) -> None:
    env = dict(os.environ)
    for module, expect in (
        ("lotdeploy", "Usage: lotdeploy [OPTIONS]"),
        ("lotdeploy.lab", "Usage: lotdeploy lab [OPTIONS]"),
        ("lotdeploy.lab.broker", "Usage: lotdeploy lab broker [OPTIONS]"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=tmp_path,
        )
        assert result.returncode == 0 and result.stdout.startswith(expect), module


def test_root_group_is_lazy() -> None:
    from lotdeploy.cli import cli
    from lotdeploy.cli.lazy import LazyGroup

    assert isinstance(cli, LazyGroup) and isinstance(cli, click.Group)


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path, known: set[str]) -> set[str]:
    """lotdeploy modules imported when `path` runs (module level, not under TYPE_CHECKING)."""
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(node.orelse)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(path.read_text()).body)
    return found & known


def test_no_import_cycles() -> None:
    paths = {_module_name(p): p for _, p in _sources()}
    graph = {name: _runtime_imports(p, set(paths)) - {name} for name, p in paths.items()}
    done: set[str] = set()

    def walk(name: str, stack: list[str]) -> None:
        if name in stack:
            raise AssertionError(
                "import cycle: " + " -> ".join([*stack[stack.index(name) :], name])
            )
        if name in done:
            return
        for dep in sorted(graph[name]):
            walk(dep, [*stack, name])
        done.add(name)

    for name in sorted(graph):
        walk(name, [])


def test_the_cli_passes_a_prompting_passphrase_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """workspace.py has no prompt of its own; the CLI's provider asks on a terminal."""
    from lotdeploy.cli import common
    from lotdeploy.secret import Secret

    asked: list[tuple[str, bool]] = []

    def fake_prompt(text: str, confirm: bool) -> str:
        asked.append((text, confirm))
        return "typed at the terminal"

    monkeypatch.delenv("LOTDEPLOY_PASSPHRASE", raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr(common, "ask_passphrase", fake_prompt)
    workspace = common.open_workspace(tmp_path / "site.yaml", None)
    assert workspace.passphrase_provider(True) == Secret("typed at the terminal")
    assert asked == [("New workspace passphrase", True)]
    monkeypatch.setenv("LOTDEPLOY_PASSPHRASE", "from the environment")
    assert workspace.passphrase_provider(False) == Secret("from the environment")
    assert len(asked) == 1


# -- the fast answers ---------------------------------------------------------------------------


@pytest.mark.parametrize("columns", [20, 50, 60, 79, 80, 100, 101, 140, 300])
@pytest.mark.parametrize("option", ["--help", "-h", "--version"])
def test_fast_help_prints_exactly_what_click_prints(columns: int, option: str) -> None:
    env = {**os.environ, "COLUMNS": str(columns)}
    fast = subprocess.run(
        [sys.executable, "-m", "lotdeploy", option],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    slow = subprocess.run(
        [sys.executable, "-c", f"from lotdeploy.cli.run import main; main([{option!r}])"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert fast.returncode == slow.returncode == 0
    assert fast.stdout == slow.stdout and fast.stderr == slow.stderr == ""


def test_fast_help_does_not_import_click() -> None:
    probe = (
        "import sys; from lotdeploy.cli import main; main(['--help']); "
        "sys.stderr.write(' '.join(sorted(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    loaded = set(result.stderr.split())
    assert "click" not in loaded and "lotdeploy.cli.app" not in loaded
