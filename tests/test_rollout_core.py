"""The rollout's pure core, without a network: the `rollout:` section (schema, located
errors), wave computation, blame and budgets, and the driver with its side effects injected
(apply, gate, restore are callables; the state is a real workspace on disk)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from lotdeploy.apply.engine import ApplyResult, NodeOutcome
from lotdeploy.errors import SpecError
from lotdeploy.model import Site
from lotdeploy.rollout.gate import GateProblem, GateResult, gate_links
from lotdeploy.rollout.restore import RestoreOutcome, route_attrs
from lotdeploy.rollout.run import (
    RolloutError,
    blame,
    judge,
    resume_rollout,
    run_rollout,
    start_rollout,
)
from lotdeploy.rollout.waves import Wave, compute_waves, wave_index
from lotdeploy.secret import Secret
from lotdeploy.spec import load_site_text
from lotdeploy.spec.schema import json_schema
from lotdeploy.state import NodeRecord, StateStore
from lotdeploy.workspace import Workspace

NODES = """
nodes:
  - {name: eu1, address: 10.0.0.1, region: eu}
  - {name: eu2, address: 10.0.0.2, region: eu, tags: [edge]}
  - {name: eu3, address: 10.0.0.3, region: eu}
  - {name: us1, address: 10.0.1.1, region: us, tags: [edge]}
  - {name: us2, address: 10.0.1.2, region: us}
  - {name: ap1, address: 10.0.2.1, region: ap}
"""


def site_of(tmp_path: Path, rollout: str = "") -> Site:
    text = "site: s\n" + NODES + textwrap.dedent(rollout)
    (tmp_path / "site.yaml").write_text(text)
    return load_site_text(text, str(tmp_path / "site.yaml"), tmp_path).site


def names(waves: list[Wave]) -> list[tuple[str, tuple[str, ...]]]:
    return [(w.name, w.nodes) for w in waves]


# -- the section -----------------------------------------------------------------------------


def test_default_waves_are_canary_rest_of_its_region_then_region_by_region(
    tmp_path: Path,
) -> None:
    site = site_of(tmp_path, "rollout: {}\n")
    assert site.rollout.enabled and site.rollout.rollback == "auto"
    # the canary: the first node of the first region by name; its region has no other
    # node, so that wave is dropped
    assert names(compute_waves(site)) == [
        ("canary", ("ap1",)),
        ("eu", ("eu1", "eu2", "eu3")),
        ("us", ("us1", "us2")),
    ]
    site = site_of(tmp_path, "rollout: {canary: eu2}\n")
    assert names(compute_waves(site)) == [
        ("canary", ("eu2",)),
        ("eu", ("eu1", "eu3")),
        ("ap", ("ap1",)),
        ("us", ("us1", "us2")),
    ]
    # --limit keeps the order and names of the waves it touches
    assert names(compute_waves(site, {"eu3", "us2"})) == [("eu", ("eu3",)), ("us", ("us2",))]


def test_explicit_waves_by_node_region_and_tag_first_wave_wins_rest_last(tmp_path: Path) -> None:
    site = site_of(
        tmp_path,
        """
        rollout:
          max_fail_percentage: 25
          waves:
            - {name: one, select: [eu1]}
            - {select: [edge, eu], max_fail_percentage: 50}
        """,
    )
    waves = compute_waves(site)
    assert names(waves) == [
        ("one", ("eu1",)),
        ("wave2", ("eu2", "eu3", "us1")),
        ("rest", ("ap1", "us2")),
    ]
    assert [w.max_fail_percentage for w in waves] == [25, 50, 25]
    assert wave_index(waves, "wave2") == 1 and wave_index(waves, "3") == 2
    with pytest.raises(ValueError, match=r"no wave 'nope'.*1=one, 2=wave2, 3=rest"):
        wave_index(waves, "nope")


def test_bad_rollout_sections_are_located_errors(tmp_path: Path) -> None:
    rollout = """
    rollout:
      canary: zz
      waves:
        - {name: a, select: [eu1, nowhere]}
        - {name: a, select: [us]}
    """
    with pytest.raises(SpecError) as caught:
        site_of(tmp_path, rollout)
    text = str(caught.value)
    assert "site.yaml:12:" in text and "rollout.canary: no node named 'zz'" in text
    assert "rollout.waves[0].select: 'nowhere' is no node, region or tag" in text
    assert "wave name 'a' is used by waves[0] too" in text
    with pytest.raises(SpecError, match=r"rollout.rollback: input should be 'auto' or 'manual'"):
        site_of(tmp_path, "rollout: {rollback: sometimes}\n")
    with pytest.raises(SpecError, match=r"unknown key 'wave'"):
        site_of(tmp_path, "rollout: {wave: []}\n")


def test_the_json_schema_describes_the_section() -> None:
    schema = json_schema()
    defs: dict[str, Any] = schema["$defs"]  # type: ignore[assignment]
    props = defs["RolloutSpec"]["properties"]
    assert {"waves", "canary", "max_fail_percentage", "max_failed_nodes", "rollback"} <= set(props)
    assert "select" in defs["WaveSpec"]["properties"]


def test_the_rollout_section_is_not_part_of_the_site_digest(tmp_path: Path) -> None:
    plain = site_of(tmp_path)
    other = site_of(tmp_path / "..", "rollout: {canary: eu2, rollback: manual}\n")
    assert plain.digest() == other.digest()


# -- decisions -------------------------------------------------------------------------------


def test_budgets_follow_ansible_max_fail_percentage() -> None:
    wave = Wave("w", ("a", "b", "c", "d"), 25)
    assert wave.allows(0) and wave.allows(1) and not wave.allows(2)
    assert not Wave("w", ("a",), 0).allows(1)
    assert judge(wave, {"a"}, set(), None) is None
    assert "over the wave's budget of 25%" in (judge(wave, {"a", "b"}, set(), None) or "")
    assert "over its budget of 1" in (judge(wave, {"a"}, {"x"}, 1) or "")
    assert "outside this wave" in (judge(wave, {"zz"}, set(), None) or "")


def test_blame_puts_a_link_on_its_end_in_the_wave() -> None:
    problems = [GateProblem(("eu1", "us1"), "no probe"), GateProblem(("us2",), "ssh")]
    assert blame(problems, {"us1", "us2"}) == {"us1", "us2"}
    assert blame([GateProblem(("eu1", "eu2"), "x")], {"us1"}) == {"eu1", "eu2"}


def test_the_gate_covers_links_between_applied_and_deployed_nodes(tmp_path: Path) -> None:
    site = site_of(tmp_path)
    links = gate_links(site, frozenset({"eu1"}), {"us1"})
    assert links == [("eu1", "us1"), ("us1", "eu1")]


def test_route_records_come_back_from_a_release_route_file(tmp_path: Path) -> None:
    site = site_of(tmp_path)
    text = (
        "DEFINE ROUTE lotdeploy_us1 WITH TYPE MQTT_CLUSTER\n    ADD CLUSTER_CONFIG\n"
        "        WITH BROKER_ADDRESS \"10.0.1.1\"\n        WITH BROKER_PORT '1883'\n"
        '        WITH CLIENT_ID "eu1-to-us1"\n        WITH USERNAME "cluster_v2"\n'
        "        WITH PASSWORD \"x\"\n        WITH MESSAGE_VALIDITY_SEC '120'\n"
    )
    attrs = route_attrs(site, "eu1", text, 2)["lotdeploy_us1"]
    assert attrs["link_class"] == "cross-region" and attrs["use_tls"] is False
    assert attrs["password_version"] == 2 and attrs["broker_port"] == 1883
    assert "x" not in json.dumps(attrs)


# -- the driver with injected side effects -----------------------------------------------------


class Fakes:
    """apply marks the nodes' records as on release `new`; the gate fails on `bad` nodes;
    restore puts the record back. The state is a real workspace document."""

    def __init__(self, workspace: Workspace, bad: set[str] | None = None) -> None:
        self.workspace = workspace
        self.bad = bad or set()
        self.applied: list[set[str]] = []
        self.gated: list[tuple[frozenset[str], frozenset[str]]] = []
        self.restored: list[str] = []
        self.unreachable: set[str] = set()

    def apply(self, nodes: set[str]) -> ApplyResult:
        self.applied.append(set(nodes))
        result = ApplyResult()
        with StateStore(self.workspace).transaction() as state:
            for name in sorted(nodes):
                outcome = NodeOutcome(name)
                if name in self.unreachable:
                    outcome.ok, outcome.failed_step, outcome.error = False, "files", "cut"
                else:
                    record = state.nodes.setdefault(name, NodeRecord())
                    record.previous_release, record.release = record.release, "new"
                result.outcomes[name] = outcome
        return result

    def gate(self, nodes: frozenset[str], ignore: frozenset[str]) -> GateResult:
        self.gated.append((nodes, ignore))
        problems = [GateProblem((n,), "broken") for n in sorted(nodes & self.bad)]
        return GateResult(not problems, problems, 0.01, len(nodes))

    def restore(self, name: str, before: NodeRecord) -> RestoreOutcome:
        self.restored.append(name)
        with StateStore(self.workspace).transaction() as state:
            state.nodes[name].release = before.release
        return RestoreOutcome(name, True, "new", before.release, "current -> old")


def deployed(tmp_path: Path, rollout: str) -> tuple[Site, Workspace]:
    site = site_of(tmp_path, rollout)
    workspace = Workspace.for_site(site.source, passphrase_provider=lambda _: Secret("p" * 12))
    with StateStore(workspace).transaction() as state:
        for node in site.nodes:
            state.nodes[node.name] = NodeRecord(release="old")
    return site, workspace


WAVES = """
rollout:
  waves:
    - {name: one, select: [eu1]}
    - {name: two, select: [eu2, eu3, us1]}
"""


def test_a_failed_gate_stops_and_rolls_back_only_that_wave(tmp_path: Path) -> None:
    site, workspace = deployed(tmp_path, WAVES)
    fakes = Fakes(workspace, bad={"eu3"})
    record = start_rollout(site, workspace, compute_waves(site), None)
    result = run_rollout(site, workspace, record, fakes.apply, fakes.gate, fakes.restore)
    assert result.status == "rolled-back" and "wave two" in result.reason
    assert fakes.applied == [{"eu1"}, {"eu2", "eu3", "us1"}]  # rest never started
    assert sorted(fakes.restored) == ["eu2", "eu3", "us1"]
    # the restore is gated: the first wave and the restored nodes
    assert fakes.gated[-1][0] == frozenset({"eu1", "eu2", "eu3", "us1"})
    state = StateStore(workspace).read()
    assert state.rollout is None and state.nodes["eu1"].release == "new"
    assert {state.nodes[n].release for n in ("eu2", "eu3", "us1", "us2")} == {"old"}


def test_manual_rollback_stops_and_says_how(tmp_path: Path) -> None:
    site, workspace = deployed(tmp_path, WAVES + "  rollback: manual\n")
    fakes = Fakes(workspace, bad={"us1"})
    record = start_rollout(site, workspace, compute_waves(site), None)
    result = run_rollout(site, workspace, record, fakes.apply, fakes.gate, fakes.restore)
    assert result.status == "failed" and not fakes.restored
    assert f"lotdeploy rollback {site.source} --limit eu2,eu3,us1" in result.hint
    state = StateStore(workspace).read()
    assert state.rollout is not None and state.rollout.status == "failed"
    assert set(state.rollout.before) == {"eu1", "eu2", "eu3", "us1"}


def test_a_failure_within_the_budget_is_left_out_of_later_gates(tmp_path: Path) -> None:
    site, workspace = deployed(tmp_path, WAVES + "  max_fail_percentage: 34\n")
    fakes = Fakes(workspace)
    fakes.unreachable = {"eu3"}
    record = start_rollout(site, workspace, compute_waves(site), None)
    result = run_rollout(site, workspace, record, fakes.apply, fakes.gate, fakes.restore)
    assert result.status == "complete", result.reason
    assert all("eu3" in ignore and "eu3" not in nodes for nodes, ignore in fakes.gated[1:])


def test_a_pause_is_in_the_state_and_continue_goes_on_from_the_next_wave(tmp_path: Path) -> None:
    site, workspace = deployed(tmp_path, WAVES)
    fakes = Fakes(workspace)
    record = start_rollout(site, workspace, compute_waves(site), "one")
    assert run_rollout(site, workspace, record, fakes.apply, fakes.gate, fakes.restore).status == (
        "paused"
    )
    with pytest.raises(RolloutError, match="a rollout paused after wave one"):
        start_rollout(site, workspace, compute_waves(site), None)
    # a new process: everything from the state
    record = resume_rollout(site, workspace, None)
    assert record.done == 1
    result = run_rollout(site, workspace, record, fakes.apply, fakes.gate, fakes.restore)
    assert result.status == "complete" and [w.name for w in result.waves] == ["two", "rest"]
    assert StateStore(workspace).read().rollout is None
    with pytest.raises(RolloutError, match="no rollout is paused"):
        resume_rollout(site, workspace, None)


def test_continue_is_refused_when_the_site_changed(tmp_path: Path) -> None:
    site, workspace = deployed(tmp_path, WAVES)
    record = start_rollout(site, workspace, compute_waves(site), "one")
    fakes = Fakes(workspace)
    run_rollout(site, workspace, record, fakes.apply, fakes.gate, fakes.restore)
    changed = site_of(tmp_path, WAVES + "  canary: eu2\n")  # same meaning: still fine
    assert resume_rollout(changed, workspace, None).done == 1
    text = (tmp_path / "site.yaml").read_text().replace("10.0.2.1", "10.0.2.9")
    other = load_site_text(text, str(tmp_path / "site.yaml"), tmp_path).site
    with pytest.raises(RolloutError, match="the site changed since the rollout paused"):
        resume_rollout(other, workspace, None)
