"""A root lab with a hand-made cluster planted (`lab up --fixture`), for the audit, import
and take-over tests: the real CLI in subprocesses, every output kept for the secret check,
the lab always torn down (and proven gone)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lotdeploy.lab import labstate
from lotdeploy.lab.hosts import Layout
from lotdeploy.secret import Secret
from lotdeploy.workspace import Workspace
from tests.conftest import TEST_PASSPHRASE, run_cli
from tests.lab_fixtures import lab_cli, leftovers

ENV = {"LOTDEPLOY_PASSPHRASE": TEST_PASSPHRASE}


@dataclass
class AdoptLab:
    base: Path
    outputs: list[str] = field(default_factory=list)

    @property
    def dir(self) -> Path:
        return self.base / "lab"

    @property
    def site_file(self) -> Path:
        return Layout(self.dir).site

    @property
    def plant(self) -> Path:
        """The site an import writes."""
        return self.base / "plant" / "site.yaml"

    @property
    def nodes(self) -> list[str]:
        return [n.name for n in labstate.require(self.dir).nodes]

    def addresses(self) -> dict[str, str]:
        return {n.name: n.address for n in labstate.require(self.dir).nodes}

    def admin_password(self) -> str:
        return Layout(self.dir).password_file.read_text().strip()

    def cli(
        self, *args: str | Path, expect: int | None = 0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The real `lotdeploy ARGS`; output kept for the secret check."""
        proc = run_cli(*args, env={**ENV, **(env or {})}, cwd=self.base)
        self.outputs += [proc.stdout, proc.stderr]
        if expect is not None:
            assert proc.returncode == expect, (
                f"lotdeploy {' '.join(map(str, args))}: exit {proc.returncode}, expected "
                f"{expect}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        return proc

    def audit(self, *targets: str | Path, expect: int = 2) -> list[dict[str, Any]]:
        proc = self.cli("audit", *targets, "--json", expect=expect)
        findings: list[dict[str, Any]] = json.loads(proc.stdout)["findings"]
        return findings

    def workspace(self) -> Workspace:
        return Workspace.for_site(self.plant, passphrase_provider=lambda _: Secret(TEST_PASSPHRASE))

    def set_defaults(self, **values: Any) -> None:
        """Edit the imported site as an operator would (its `defaults`)."""
        doc = yaml.safe_load(self.plant.read_text())
        doc["defaults"].update(values)
        self.plant.write_text(yaml.safe_dump(doc, sort_keys=False))


@contextlib.contextmanager
def fixture_lab(base: Path, fixture: str, *args: str) -> Iterator[AdoptLab]:
    """`lab up --nodes 3 --fixture FIXTURE ARGS`; always `lab down`, nothing left."""
    lab = AdoptLab(base)
    try:
        up = lab_cli(lab.dir, "up", "--nodes", "3", "--fixture", fixture, *args)
        lab.outputs += [up.stdout, up.stderr]
        assert up.returncode == 0, up.stderr
        yield lab
    finally:
        down = lab_cli(lab.dir, "down")
        deadline = time.monotonic() + 10
        left = [x for x in leftovers(lab.dir) if not x.startswith("files")]
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = [x for x in leftovers(lab.dir) if not x.startswith("files")]
        assert down.returncode == 0 and not left, f"lab down: {down.stderr} left {left}"


def leaks(lab: AdoptLab, values: dict[str, str], allowed: list[Path]) -> list[str]:
    """Where any of `values` (name -> secret) occurs: in every output the lab's commands
    printed, and in every file under the test's directory but `allowed` (the encrypted
    store, the brokers' own state, the nodes' TLS and release directories)."""
    needles = dict(values)
    for name, value in values.items():  # a PEM key, line by line (not its last line: that
        body = [line for line in value.splitlines() if not line.startswith("-----")]
        for i, line in enumerate(body[:-1]):  # holds the public key, which certificates have)
            if len(line) >= 40:
                needles[f"{name} line {i}"] = line
    texts = {f"output {i}": text for i, text in enumerate(lab.outputs)}
    for path in sorted(lab.base.rglob("*")):
        if path.is_file() and not path.is_symlink():
            if any(path == a or a in path.parents for a in allowed):
                continue
            texts[str(path)] = path.read_bytes().decode("utf-8", errors="replace")
    return [
        f"{name} in {where}"
        for where, text in texts.items()
        for name, value in needles.items()
        if value and value in text
    ]


def allowed_files(lab: AdoptLab) -> list[Path]:
    layout = Layout(lab.dir)
    return [
        lab.plant.parent / ".lotdeploy" / "secrets.enc",
        layout.password_file,
        *(layout.node_sub(n, sub) for n in lab.nodes for sub in ("tls", "release", "broker")),
    ]
