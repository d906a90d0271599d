"""Fleets without a lab: discovery, shared settings (`extends:`), the one exit status, and an
offline `lotdeploy plan FLEET_DIR` whose one broken site fails alone."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from lotdeploy.errors import LotdeployError
from lotdeploy.fleet import SiteRun, discover, fleet_status
from tests.conftest import run_cli

SHARED = """
defaults:
  tls: true
  message_validity_sec: 45
regions:
  eu: {message_validity_sec: 20}
"""


def make_fleet(root: Path) -> Path:
    fleet = root / "fleet"
    for name, extra in (("a", ""), ("b", "regions: {eu: {message_validity_sec: 25}}\n")):
        (fleet / name).mkdir(parents=True)
        (fleet / name / "site.yaml").write_text(
            f"site: {name}\nextends: ../shared.yaml\n{extra}nodes:\n"
            "  - {name: n1, address: 10.0.0.1, region: eu}\n"
            "  - {name: n2, address: 10.0.0.2, region: eu}\n"
        )
    (fleet / "shared.yaml").write_text(textwrap.dedent(SHARED))
    (fleet / "notes").mkdir()  # a directory without a site is not one
    return fleet


def test_discovery_and_selection(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path)
    assert [s.name for s in discover(fleet)] == ["a", "b"]
    assert [s.name for s in discover(fleet, ["b"])] == ["b"]
    with pytest.raises(LotdeployError, match="no site zz"):
        discover(fleet, ["zz"])
    with pytest.raises(LotdeployError, match="holds no site"):
        discover(fleet / "notes")


def test_one_exit_status_for_the_fleet() -> None:
    def runs(*codes: int | None) -> list[SiteRun]:
        return [SiteRun(str(i), [], status=c) for i, c in enumerate(codes)]

    assert fleet_status(runs(0, 0)) == 0
    assert fleet_status(runs(0, 2)) == 2
    assert fleet_status(runs(2, 1, 0)) == 1
    assert fleet_status(runs(None, 0)) == 1
    assert fleet_status(runs(1, 70)) == 70
    assert fleet_status(runs(2, 130, 70)) == 130


def test_shared_settings_reach_each_site_and_the_site_wins(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path)
    plan_a = json.loads(run_cli("plan", fleet / "a" / "site.yaml", "--json").stdout)
    plan_b = json.loads(run_cli("plan", fleet / "b" / "site.yaml", "--json").stdout)
    validity = {
        doc["site"]: {
            c["attributes"]["MESSAGE_VALIDITY_SEC"]["after"]
            for c in doc["changes"]
            if c["kind"] == "route"
        }
        for doc in (plan_a, plan_b)
    }
    # a: the region's from the shared file; b: its own region setting wins, key by key
    assert validity == {"a": {"20"}, "b": {"25"}}
    tls = {
        c["attributes"].get("USE_TLS", {}).get("after")
        for c in plan_a["changes"]
        if c["kind"] == "route"
    }
    assert tls == {"true"}


def test_a_broken_site_fails_alone_and_a_broken_shared_file_points_into_itself(
    tmp_path: Path,
) -> None:
    fleet = make_fleet(tmp_path)
    good = run_cli("plan", fleet, "--json")
    doc = json.loads(good.stdout)
    assert good.returncode == 0 and [s["result"] for s in doc["sites"]] == ["ok", "ok"]
    (fleet / "b" / "site.yaml").write_text("site: b\nnodes: []\n")
    mixed = run_cli("plan", fleet)
    assert mixed.returncode == 1
    assert "a     ok" in mixed.stdout and "b     error" in mixed.stdout, mixed.stdout
    (fleet / "shared.yaml").write_text("defaults:\n  tls: maybe\nnodes: []\n")
    bad = run_cli("validate", fleet / "a" / "site.yaml")
    lines = bad.stderr.splitlines()
    assert any(
        line.startswith(str(fleet / "shared.yaml") + ":2:8: error: defaults.tls") for line in lines
    ), bad.stderr
    assert any(":3:1: error: `nodes` cannot be shared" in line for line in lines), bad.stderr


def test_metric_samples_keep_full_precision() -> None:
    """A last-success timestamp keeps its seconds (`:.6g` made 1731234567.891 1.73123e+09)."""
    from lotdeploy.watch import _sample

    assert _sample(1731234567.891) == "1731234567.891"
    assert _sample(1731234567.0) == "1731234567"
    assert _sample(1234567890123) == "1234567890123"
    assert _sample(0.5) == "0.5"
    assert (_sample(float("nan")), _sample(float("inf"))) == ("NaN", "+Inf")
