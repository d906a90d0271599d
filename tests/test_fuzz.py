"""Fuzzing every reader of what lotdeploy reads back, and the broker-reply parsers.

Each reader gets real documents mutated at random places (a value replaced by any JSON, a
key dropped or added), raw bytes, and the known nasty forms (deep nesting, NaN, numbers
too large, lone surrogates, invalid UTF-8). The promise (docs/reliability.md): a reader
returns, or raises its layer's error (one line naming the file; exit 1 at the CLI): never
another exception (a traceback, exit 70), never a hang. Examples are bounded so each test
takes a few seconds; the CLI itself is run on the nasty forms in tests/test_safety.py.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lotdeploy.ansible.runner import PrivateDataDir
from lotdeploy.broker.session import CommandFailed, routes_of
from lotdeploy.cli.run import error_line
from lotdeploy.doctor import BrokerFacts
from lotdeploy.errors import LabError, LotdeployError, WorkspaceError
from lotdeploy.fsutil import UnreadableFile, parse_json
from lotdeploy.lab import labstate
from lotdeploy.plan.document import read_plan, to_json
from lotdeploy.protocol import build_reply, encode_reply, parse_reply
from lotdeploy.render import _owner
from lotdeploy.secret import Secret
from lotdeploy.state import STATE_FILE, StateError, StateStore, migrate_legacy
from lotdeploy.verify.output import LastUnreadable, last_path, load_last
from lotdeploy.workspace import SecretStore, Workspace
from tests.test_plan import _plan

REPO = Path(__file__).resolve().parent.parent
LEGACY = Path(__file__).parent / "fixtures" / "legacy-workspace"
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: Forms no mutation of a document reaches by chance.
NASTY: list[bytes] = [
    b"",
    b"[" * 100_000,
    b"{" + b'"a":{' * 5_000,
    b"[" * 65 + b"]" * 65,
    b"NaN",
    b'{"serial": NaN}',
    b"[Infinity, -Infinity]",
    b"[1e999]",
    b'{"a": ' + b"9" * 5_000 + b"}",
    b'"\\ud800"',
    b'{"\\udfff": 1}',
    b"\xff\xfe\x00",
    b"\x00" * 64,
    b"null",
    b"[]",
    b'"text"',
    b"{}",
    b'{"a": "\x1b]52;c;cHduZWQ=\x07"}',
]

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a document (the root too)."""
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc[:20]):  # long lists: their head is enough
            yield from _paths(value, (*prefix, index))


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return doc


def _drop(doc: Any, path: tuple[Any, ...]) -> Any:
    if not path:
        return doc
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return doc


@st.composite
def mutated(draw: st.DrawFn, base: Any) -> bytes:
    """`base` with one to three random changes, as JSON bytes."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(doc))))
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "replace":
            doc = _set(doc, path, draw(json_values))
        elif action == "drop":
            doc = _drop(doc, path)
        else:
            target = doc
            for key in path:
                target = target[key]
            if isinstance(target, dict):
                target[draw(st.text(max_size=8))] = draw(json_values)
            elif isinstance(target, list):
                target.append(draw(json_values))
    return json.dumps(doc).encode()


def inputs(base: Any) -> st.SearchStrategy[bytes]:
    return st.one_of(mutated(base), st.binary(max_size=64), st.sampled_from(NASTY))


# -- the bounded JSON parser itself ---------------------------------------------------------


@FUZZ
@given(st.one_of(st.binary(max_size=200), st.sampled_from(NASTY), st.text(max_size=200)))
def test_parse_json_returns_or_refuses(data: bytes | str) -> None:
    try:
        parse_json(data)
    except UnreadableFile as exc:
        assert exc.reason and "\n" not in exc.reason


@FUZZ
@given(json_values)
def test_parse_json_reads_what_json_writes(value: Any) -> None:
    assert parse_json(json.dumps(value)) == value


# -- every file lotdeploy reads back --------------------------------------------------------


@pytest.fixture(scope="module")
def plan_doc(tmp_path_factory: pytest.TempPathFactory) -> Any:
    site = tmp_path_factory.mktemp("plan") / "site.yaml"
    shutil.copy(REPO / "inventories" / "geo.yaml", site)
    return json.loads(to_json(_plan(site)[2]))


@pytest.fixture(scope="module")
def state_doc(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("legacy") / ".lotdeploy"
    shutil.copytree(LEGACY / "workspace", root)
    return migrate_legacy(Workspace(root)).to_json()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_plan_reader(tmp_path: Path, plan_doc: Any) -> None:
    @FUZZ
    @given(inputs(plan_doc))
    def check(data: bytes) -> None:
        try:
            read_plan(_write(tmp_path / "x.plan", data))
        except WorkspaceError as exc:
            assert str(exc).startswith(str(tmp_path / "x.plan")) and "\n" not in error_line(
                str(exc)
            )

    check()


def test_state_reader(tmp_path: Path, state_doc: Any) -> None:
    workspace = Workspace(tmp_path / "ws")

    @FUZZ
    @given(inputs(state_doc))
    def check(data: bytes) -> None:
        _write(workspace.root / STATE_FILE, data)
        try:
            StateStore(workspace).read()
        except StateError as exc:
            assert STATE_FILE in str(exc) and "\n" not in error_line(str(exc))

    check()


def test_legacy_state_readers(tmp_path: Path) -> None:
    files = {
        name: json.loads((LEGACY / "workspace" / name).read_text())
        for name in ("state/state.json", "credentials.json", "rotation.json", "pki/index.json")
    }
    workspace = Workspace(tmp_path / "ws")

    @FUZZ
    @given(
        st.sampled_from(sorted(files)).flatmap(lambda n: st.tuples(st.just(n), inputs(files[n])))
    )
    def check(case: tuple[str, bytes]) -> None:
        name, data = case
        shutil.rmtree(workspace.root, ignore_errors=True)
        _write(workspace.root / name, data)
        try:
            migrate_legacy(workspace)
        except StateError as exc:
            assert "\n" not in error_line(str(exc))

    check()


def test_secret_store_reader(tmp_path: Path) -> None:
    passphrase = Secret("fuzzing passphrase, long enough")
    store = SecretStore.open(tmp_path / "base.enc", passphrase)
    store.set("cluster-password-v1", Secret("a generated cluster password"))
    store.save()
    base = json.loads((tmp_path / "base.enc").read_text())

    @settings(FUZZ, max_examples=60)  # a header that survives the mutation costs one scrypt
    @given(inputs(base))
    def check(data: bytes) -> None:
        path = _write(tmp_path / "secrets.enc", data)
        try:
            SecretStore.open(path, passphrase, create=False)
        except LotdeployError as exc:
            assert str(exc).startswith(str(path)) and "\n" not in error_line(str(exc))

    check()


def test_run_log_reader(tmp_path: Path) -> None:
    pdd = PrivateDataDir(tmp_path)
    record = {
        "ident": "20250101T000000-deploy-abc123",
        "playbook": "deploy.yml",
        "artifacts": "/x",
        "nodes": ["eu1"],
        "status": "successful",
        "rc": 0,
        "seconds": 1.5,
        "hosts": {"eu1": {"ok": True, "changed": 1, "error": None, "failed_task": None}},
    }

    @FUZZ
    @given(st.lists(inputs(record), min_size=1, max_size=4))
    def check(lines: list[bytes]) -> None:
        _write(pdd.root / "runs.jsonl", b"\n".join(lines))
        try:
            runs, skipped = pdd.runs()
        except LotdeployError as exc:
            assert "runs.jsonl" in str(exc)
            return
        for run in runs:
            assert isinstance(run["ident"], str) and isinstance(run.get("hosts", {}), dict)
        assert all("runs.jsonl:" in line and "\n" not in line for line in skipped)

    check()


def test_last_verify_result_reader(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "ws")
    base = {
        "site": "x",
        "run_id": "r",
        "nodes": {},
        "checks": [],
        "started_at": "2025-01-01T00:00:00+00:00",
    }

    @FUZZ
    @given(inputs(base))
    def check(data: bytes) -> None:
        _write(last_path(workspace), data)
        try:
            load_last(workspace)
        except LastUnreadable as exc:
            assert "\n" not in error_line(str(exc))

    check()


def test_lab_state_reader(tmp_path: Path) -> None:
    base = {
        "lab_id": "abc123",
        "mode": "root",
        "subnet": "198.18.0.0/24",
        "nodes": [{"name": "node1", "region": "lab", "address": "198.18.0.11"}],
        "pids": {},
    }

    @FUZZ
    @given(inputs(base))
    def check(data: bytes) -> None:
        _write(labstate.state_path(tmp_path), data)
        try:
            labstate.load(tmp_path)
        except LabError as exc:
            assert "\n" not in error_line(str(exc))

    check()


def test_bundle_manifest_reader(tmp_path: Path) -> None:
    base = json.loads(
        (REPO / "tests/fixtures/release-0.1.0/geo-notls/out/eu1/manifest.json").read_text()
    )

    @FUZZ
    @given(inputs(base))
    def check(data: bytes) -> None:
        _write(tmp_path / "eu1" / "manifest.json", data)
        owner = _owner(tmp_path / "eu1")
        assert owner is None or isinstance(owner, str)

    check()


def test_broker_facts_reader() -> None:
    @FUZZ
    @given(st.one_of(json_values, st.binary(max_size=64).map(bytes), st.sampled_from(NASTY)))
    def check(doc: Any) -> None:
        try:
            BrokerFacts.from_json(doc)
        except ValueError as exc:
            assert "\n" not in error_line(str(exc))

    check()


# -- broker replies ---------------------------------------------------------------------------

_envelopes = st.fixed_dictionaries(
    {},
    optional={
        "success": json_values,
        "command": json_values,
        "requestId": json_values,
        "message": json_values,
        "data": json_values,
        "errors": json_values,
    },
).map(lambda d: {"success": False, **d} if "success" not in d and d else d)


@FUZZ
@given(
    st.one_of(
        _envelopes.map(lambda d: json.dumps(d).encode()),
        st.builds(
            lambda ok, msg, data: encode_reply(
                build_reply(ok, "listRoutes", "id", msg, data), "text"
            ),
            st.booleans(),
            st.text(max_size=40),
            json_values,
        ),
        st.text(max_size=80).map(str.encode),
        st.binary(max_size=80),
        st.sampled_from(
            [*NASTY, b"Parsing error: (" + b"9" * 5000 + b",1)", b"(1,2) error", b"\x1b[2J"]
        ),
    ),
    st.sampled_from(["addRoute", "listRoutes", "removeRoute", ""]),
)
def test_broker_replies_never_raise(payload: bytes, verb: str) -> None:
    reply = parse_reply(payload, verb)
    assert isinstance(reply.describe(), str)
    routes_of(reply)
    str(CommandFailed("n1", verb or "x", reply))
    parse_reply(payload.decode("utf-8", "replace"), verb)
