"""The output is byte-identical to release 0.1.0's (commit 703ec5a): plan text, plan JSON (the
fields 0.1.0 had), every rendered file (routes.lot, manifest.json) and its mode.

The references in tests/fixtures/release-0.1.0/ were made ONCE by running the 0.1.0 CLI on
the same sites, in the same deterministic way this test runs the current one:

    git -C /work/main worktree add /tmp/oldrel 703ec5a     # or: git archive 703ec5a | tar -x
    .venv/bin/python tests/test_output_identity.py --regenerate /tmp/oldrel

Deterministic: each case runs in a fresh directory holding only `site.yaml` (paths in the
output are relative); before `render`, the workspace secret store is created with a fixed
passphrase and a fixed cluster password (`cluster-password-v1`), each release with its own
`SecretStore`, so nothing is random; TLS is off in every rendered site (no keys). Steps:
`plan` and `plan --json` on the bare site, then the store, `render --out out`, then `plan`
and `plan --json` again.

Cases: the vendor example (inventories/plant-a.yaml, whose routes must also equal the golden
files in tests/golden/plant-a/), inventories/geo.yaml (TLS on: plan only, before any key
exists), the same with TLS off (rendered), and a generated 200-node mesh (39,800 routes), for
which only sha256 digests are stored.

Four differences from 0.1.0 are intended and normalised here, nothing else:
  * plan text: the warning prefix changed from "Warning:" to "warning:" in this release;
  * plan text: a second header line says what the plan was made from (offline or refreshed);
  * plan text and JSON: a warning that, nothing being known yet of the brokers' secret
    stores, the routes carry the password inline (`password_source: auto`, issue 21 item 6);
  * plan --json: the layout changed (new fields: format, state_serial, node_regions, steps,
    per change key and payload; compact lines); compared as parsed JSON restricted to the
    fields 0.1.0 had, never as bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "release-0.1.0"
GOLDEN = Path(__file__).resolve().parent / "golden" / "plant-a"
RELEASE = "0.1.0"
RELEASE_COMMIT = "703ec5a"

PASSPHRASE = "output identity passphrase 0123"
#: the vendor example's password, so plant-a's routes equal the golden files
CLUSTER_PASSWORD = "secure_cluster_pass"
PLANS = ("plan-fresh", "plan-after")
#: how the plan's warning about routes still inline under password_source auto begins
SECRET_NOTE = "password_source auto: not known yet"
# before the workspace exists, after render
#: cases whose outputs are stored as files; the others only as digests
STORED_AS_FILES = {"plant-a", "geo", "geo-notls"}

MAKE_STORE = f"""
from pathlib import Path
from lotdeploy.secret import Secret
from lotdeploy.workspace import SecretStore, Workspace
workspace = Workspace.for_site(Path("site.yaml"))
workspace.ensure()
store = SecretStore.open(workspace.secrets_path, Secret({PASSPHRASE!r}))
store.set("cluster-password-v1", Secret({CLUSTER_PASSWORD!r}))
store.save()
"""


def mesh_site(nodes: int) -> str:
    """The generated full mesh (as bench/bench_compile.write_site writes it, kept here so a
    change to the benchmark cannot change the reference)."""
    regions = ["eu", "us", "ap"]
    lines = ["site: bench", "defaults:", "  tls: false", "nodes:"]
    for i in range(nodes):
        lines += [
            f"  - name: n{i:03d}",
            f"    address: 10.{i // 250}.{i % 250}.1",
            f"    region: {regions[i % 3]}",
        ]
    return "\n".join(lines) + "\n"


def tls_off(text: str) -> str:
    replaced, count = re.subn(r"(?m)^(  tls:\s*)true\b", r"\1false", text)
    assert count == 1, "expected one `  tls: true` under defaults"
    return replaced


CASES: dict[str, tuple[str, bool]] = {
    # name: (site.yaml text, render it)
    "plant-a": ((REPO / "inventories" / "plant-a.yaml").read_text(), True),
    "geo": ((REPO / "inventories" / "geo.yaml").read_text(), False),
    "geo-notls": (tls_off((REPO / "inventories" / "geo.yaml").read_text()), True),
    "mesh-200": (mesh_site(200), True),
}


def normalise_plan_text(text: str) -> str:
    """The two intended differences in the plan text: release 0.1.0 printed warnings as
    "Warning: ..." (now "warning: ..."), and had no apply, so no block saying what apply
    does on each node ("On the nodes ...", new with apply): that block is left out."""
    text = re.sub(r"\nOn the nodes \(what apply does there\):\n(?:  .*\n)+", "", text)
    # the header's second line, new with apply's refresh: what the plan was made from
    text = re.sub(r"(?m)\A(lotdeploy plan: .*\n)  (?:offline|refreshed): .*\n", r"\1", text)
    # new with the broker secret store: routes stay inline until the brokers were asked
    text = re.sub(r"(?m)^\s*warning: (?:%s).*\n" % re.escape(SECRET_NOTE), "", text)
    text = re.sub(r"\n\n(?=\nPlan: )", "\n", text)
    return re.sub(r"(?m)^(\s*)Warning: ", r"\1warning: ", text)


def json_shape(doc: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every key path of `doc` (list items as "[]"): the fields a release's plan JSON has."""
    paths: set[tuple[str, ...]] = set()
    if isinstance(doc, dict):
        for key, value in doc.items():
            paths.add((*prefix, key))
            paths |= json_shape(value, (*prefix, key))
    elif isinstance(doc, list):
        for value in doc:
            paths |= json_shape(value, (*prefix, "[]"))
    return paths


def project(doc: Any, shape: set[tuple[str, ...]], prefix: tuple[str, ...] = ()) -> Any:
    """`doc` restricted to the key paths in `shape` (what an older reader sees of it)."""
    if isinstance(doc, dict):
        return {k: project(v, shape, (*prefix, k)) for k, v in doc.items() if (*prefix, k) in shape}
    if isinstance(doc, list):
        return [project(v, shape, (*prefix, "[]")) for v in doc]
    return doc


def canonical_digest(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(code_root: Path, cwd: Path, *args: str) -> str:
    """Run `python -m lotdeploy ARGS` (or `python -c` code) of the tree at `code_root`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOTDEPLOY_")}
    env.update(PYTHONPATH=str(code_root), LOTDEPLOY_PASSPHRASE=PASSPHRASE)
    argv = (
        [sys.executable, *args] if args[0] == "-c" else [sys.executable, "-m", "lotdeploy", *args]
    )
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, timeout=600, check=False)
    assert proc.returncode == 0, f"{argv} in {cwd}: {proc.returncode}\n{proc.stderr.decode()}"
    return proc.stdout.decode()


def produce(code_root: Path, site_text: str, render: bool, work: Path) -> dict[str, Any]:
    """Every output of one case: plan texts and parsed JSONs, and the rendered files
    (relative path -> (bytes, mode))."""
    work.mkdir()
    (work / "site.yaml").write_text(site_text)
    result: dict[str, Any] = {"files": {}}
    steps = [PLANS[0]]
    if render:
        steps.append("render")
        steps.append(PLANS[1])
    for step in steps:
        if step == "render":
            run(code_root, work, "-c", MAKE_STORE)
            run(code_root, work, "render", "site.yaml", "--out", "out")
            continue
        result[f"{step}.txt"] = run(code_root, work, "plan", "site.yaml")
        result[f"{step}.json"] = json.loads(run(code_root, work, "plan", "--json", "site.yaml"))
    out = work / "out"
    if render:
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            mode = f"{path.stat().st_mode & 0o7777:04o}"
            result["files"][path.relative_to(out).as_posix()] = (path.read_bytes(), mode)
    return result


# -- the references (made once, with the old release) ---------------------------------------


def regenerate(old_root: Path) -> None:
    init = (old_root / "lotdeploy" / "__init__.py").read_text()
    assert f'__version__ = "{RELEASE}"' in init, f"{old_root} is not release {RELEASE}"
    if FIXTURES.exists():
        shutil.rmtree(FIXTURES)
    FIXTURES.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (site_text, render) in CASES.items():
            got = produce(old_root, site_text, render, Path(tmp) / name)
            index: dict[str, Any] = {"files": {}, "plans": {}}
            case_dir = FIXTURES / name
            case_dir.mkdir()
            for step in PLANS:
                if f"{step}.txt" not in got:
                    continue
                text = got[f"{step}.txt"]
                doc = got[f"{step}.json"]
                index["plans"][step] = {
                    "text_sha256": digest(normalise_plan_text(text).encode()),
                    "json_sha256": canonical_digest(doc),
                    "json_shape": sorted(map(list, json_shape(doc))),
                }
                if name in STORED_AS_FILES:
                    (case_dir / f"{step}.txt").write_text(text)
                    (case_dir / f"{step}.json").write_text(json.dumps(doc, indent=1) + "\n")
            for relative, (data, mode) in got["files"].items():
                index["files"][relative] = {"sha256": digest(data), "mode": mode}
                if name in STORED_AS_FILES:
                    target = case_dir / "out" / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
            (case_dir / "digests.json").write_text(json.dumps(index, indent=1, sort_keys=True))
    (FIXTURES / "README.md").write_text(
        f"Outputs of lotdeploy {RELEASE} (commit {RELEASE_COMMIT}), made by\n"
        "`python tests/test_output_identity.py --regenerate OLD_TREE`; see that file.\n"
        "Per case: `digests.json` (sha256 and mode of every rendered file; sha256 of the plan\n"
        "text, normalised, and of the canonical plan JSON, with the key paths that JSON had).\n"
        "The small cases also keep the files themselves (git does not keep their modes:\n"
        "digests.json does). The 200-node case keeps digests only.\n"
    )


# -- the test -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n == "mesh-200" else n for n in CASES],
)
def test_output_identical_to_release_0_1_0(name: str, tmp_path: Path) -> None:
    site_text, render = CASES[name]
    index = json.loads((FIXTURES / name / "digests.json").read_text())
    got = produce(REPO, site_text, render, tmp_path / name)
    case_dir = FIXTURES / name

    assert sorted(got["files"]) == sorted(index["files"]), "different set of rendered files"
    for relative, (data, mode) in got["files"].items():
        want = index["files"][relative]
        if name in STORED_AS_FILES:
            assert data == (case_dir / "out" / relative).read_bytes(), f"{relative} differs"
        assert digest(data) == want["sha256"], f"{relative}: content differs from {RELEASE}"
        assert mode == want["mode"], f"{relative}: mode {mode}, {RELEASE} wrote {want['mode']}"

    assert sorted(index["plans"]) == sorted(s for s in PLANS if f"{s}.txt" in got)
    for step, want in index["plans"].items():
        text = normalise_plan_text(got[f"{step}.txt"])
        # plan --json changed layout on purpose: compare only the fields 0.1.0 had
        shape = {tuple(path) for path in want["json_shape"]}
        doc = got[f"{step}.json"]
        doc["warnings"] = [w for w in doc.get("warnings", []) if not w.startswith(SECRET_NOTE)]
        projected = project(doc, shape)
        if name in STORED_AS_FILES:
            assert text == normalise_plan_text((case_dir / f"{step}.txt").read_text())
            assert projected == json.loads((case_dir / f"{step}.json").read_text())
        assert digest(text.encode()) == want["text_sha256"], f"{step}: plan text differs"
        assert canonical_digest(projected) == want["json_sha256"], f"{step}: plan JSON differs"


def test_vendor_example_routes_equal_the_golden_files() -> None:
    """The 0.1.0 reference of the vendor example is the golden files (the fixtures agree
    with what test_compiler checks)."""
    out = FIXTURES / "plant-a" / "out"
    nodes = sorted(p.name for p in out.iterdir())
    assert nodes == sorted(p.stem for p in GOLDEN.glob("*.lot"))
    for node in nodes:
        assert (out / node / "routes.lot").read_bytes() == (GOLDEN / f"{node}.lot").read_bytes()


def test_projection_keeps_only_the_old_fields() -> None:
    old = {"a": 1, "changes": [{"k": 1, "attributes": {"X": {"before": None}}}]}
    new = {
        "a": 1,
        "new": 2,
        "changes": [{"k": 1, "key": "n", "attributes": {"X": {"before": None}, "Y": {}}}],
    }
    assert project(new, json_shape(old)) == {
        "a": 1,
        "changes": [{"k": 1, "attributes": {"X": {"before": None}}}],
    }
    assert normalise_plan_text("  Warning: x\nWarning: y\n") == "  warning: x\nwarning: y\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="regenerate the release-0.1.0 references")
    parser.add_argument("--regenerate", type=Path, required=True, metavar="OLD_TREE")
    regenerate(parser.parse_args().regenerate.resolve())
