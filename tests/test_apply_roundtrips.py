"""The round trips apply, drift and refresh save still leave the same result on the broker:
routes added without a remove where the connect listing shows none (and a route the listing
missed is still replaced), apply's light capability check agrees with doctor's full probe on
what activation needs, and many routes' code is read with one SUBSCRIBE, bounded.

Every broker here is the lab broker in-process on 127.0.0.1 (port 0); every wait is bounded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from lotdeploy.apply.activate import apply_routes
from lotdeploy.broker.session import BrokerClient, CommandFailed
from lotdeploy.broker.sync import SyncBrokerClient
from lotdeploy.doctor import SCRATCH_ROUTE, probe_broker, probe_for_apply
from lotdeploy.lab.broker.dialect import DIALECT_1X, DIALECT_2X, Dialect
from lotdeploy.lab.broker.server import LabNode
from lotdeploy.secret import Secret
from tests.broker_fixtures import cluster_route, run
from tests.lab_fixtures import skip_unless_root
from tests.test_doctor import ADMIN_PASSWORD, HOST, NOW, admin_client, lab_node, other_route

DIALECTS = [
    DIALECT_2X,
    DIALECT_1X,
    Dialect(echo_request_id=False),
    Dialect(readd="overwrite"),
    Dialect(route_code_missing=frozenset({"USE_TLS"})),
]


def route(name: str, validity: int = 30) -> str:
    return cluster_route(name, HOST, 1, f"id-{name}", validity=validity)


def counted(client: BrokerClient) -> list[str]:
    """The verbs `client` sends from now on (a spy: the commands still go to the broker)."""
    verbs: list[str] = []
    original = client.command

    async def command(verb: str, argument: str = "") -> Any:
        verbs.append(verb.lstrip("-"))
        return await original(verb, argument)

    client.command = command  # type: ignore[method-assign]
    return verbs


async def in_thread(node: LabNode, body: Callable[[SyncBrokerClient], Any]) -> Any:
    """`body` with a blocking admin session (what apply uses), in a worker thread, while the
    in-process broker runs on this loop."""
    assert node.port is not None
    port = node.port

    def work() -> Any:
        client = SyncBrokerClient(
            "lab", HOST, port, "root", Secret(ADMIN_PASSWORD), reply_timeout=5, request_ids="auto"
        )
        client.connect()
        try:
            return body(client)
        finally:
            client.close()

    return await asyncio.wait_for(asyncio.to_thread(work), 30)


@pytest.mark.parametrize("dialect", [DIALECT_2X, DIALECT_1X], ids=lambda d: d.label)
def test_a_fresh_broker_gets_one_command_per_route(dialect: Dialect) -> None:
    names = [f"lotdeploy_n{i}" for i in range(4)]

    def body(client: SyncBrokerClient) -> list[str]:
        verbs = counted(client._client)
        apply_routes(client, "lab", [], {n: route(n) for n in names})
        return verbs

    async def main() -> None:
        async with lab_node(dialect) as node:
            verbs = await in_thread(node, body)
            assert verbs == ["addRoute"] * len(names)
            assert sorted(node.state.routes) == names

    run(main())


@pytest.mark.parametrize(
    ("readd", "known"),
    [("reject", True), ("overwrite", True), ("reject", False), ("overwrite", False)],
    ids=["reject", "overwrite", "reject-learned", "overwrite-learned"],
)
def test_existing_routes_are_replaced_and_a_route_the_listing_missed_too(
    readd: str, known: bool
) -> None:
    """`lotdeploy_a` exists when the session connects (listed: removed first where the
    broker is known to refuse a re-add, else added in place); `lotdeploy_b` is added by
    another admin after the listing (missed: the refused add is followed by a remove and the
    add again). Where the broker's re-add was not known, what it did is returned."""
    dialect = Dialect(readd=readd)  # type: ignore[arg-type]
    learned: list[str] = []

    async def main() -> None:
        async with lab_node(dialect) as node, admin_client(node) as other:
            await other.add_route(route("lotdeploy_a"))
            loop = asyncio.get_running_loop()

            def body(client: SyncBrokerClient) -> list[str]:
                # after this session's connect listing: another admin adds lotdeploy_b
                asyncio.run_coroutine_threadsafe(
                    other.add_route(route("lotdeploy_b")), loop
                ).result(10)
                verbs = counted(client._client)
                found = apply_routes(
                    client,
                    "lab",
                    [],
                    {
                        "lotdeploy_a": route("lotdeploy_a", 41),
                        "lotdeploy_b": route("lotdeploy_b", 42),
                    },
                    remove_before_add=known and readd != "overwrite",
                )
                learned.append(found)
                return verbs

            verbs = await in_thread(node, body)
            if not known:  # both added in place; the refused ones removed and added together
                assert learned == [readd]
                if readd == "overwrite":
                    assert verbs == ["addRoute", "addRoute"]
                else:
                    assert verbs == ["addRoute"] * 2 + ["removeRoute"] * 2 + ["addRoute"] * 2
            elif readd == "overwrite":
                assert verbs == ["addRoute", "addRoute"]
            else:
                assert verbs == [
                    "removeRoute",
                    "addRoute",  # lotdeploy_a, listed
                    "addRoute",
                    "removeRoute",
                    "addRoute",  # lotdeploy_b, missed by the listing
                ]
            for name, validity in (("lotdeploy_a", 41), ("lotdeploy_b", 42)):
                assert f"MESSAGE_VALIDITY_SEC '{validity}'" in node.state.routes[name]

    run(main())


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.label)
def test_the_light_probe_agrees_with_doctor_on_what_activation_needs(dialect: Dialect) -> None:
    async def main() -> None:
        async with lab_node(dialect) as node, admin_client(node, request_ids="auto") as c:
            await c.add_route(other_route(dialect.route_code_missing))
            before = dict(node.state.routes)
            verbs = counted(c)
            light = await probe_for_apply(c, now_iso=NOW)
            asked = list(verbs)
            assert node.state.routes == before  # no scratch route was added
            assert node.port is not None
            full = await probe_broker(c, host=HOST, port=node.port, tls=None, now_iso=NOW)
            for field in ("reply_format", "request_id_echo", "cluster_keys"):
                assert getattr(light, field) == getattr(full, field), field
            assert light.cluster_keys_read == full.cluster_keys_read
            assert light.version is None and light.factory_admin_accepted is None
            # -routeCode only: no scratch route (apply learns a re-add from its first one)
            assert asked == ["routeCode"] and light.readd == "unknown"

    run(main())


def test_the_light_probe_leaves_an_existing_scratch_route_alone() -> None:
    async def main() -> None:
        async with lab_node() as node:
            async with admin_client(node) as c:
                await c.add_route(cluster_route(SCRATCH_ROUTE, HOST, 1, "theirs"))
            before = dict(node.state.routes)
            async with admin_client(node, request_ids="auto") as c:
                facts = await probe_for_apply(c, now_iso=NOW)
            assert facts.readd == "unknown"
            assert node.state.routes == before
            assert node.routes.links[SCRATCH_ROUTE].spec.client_id == "theirs"

    run(main())


def test_many_routes_code_is_read_at_once_and_bounded() -> None:
    names = [f"lotdeploy_r{i}" for i in range(5)]

    async def main() -> None:
        async with lab_node() as node, admin_client(node) as c:
            for name in names:
                await c.add_route(route(name))
            assert c._conn is not None
            subscribes: list[int] = []
            original = c._conn.subscribe

            async def subscribe(topics: list[tuple[str, int]], timeout: float = 10.0) -> Any:
                subscribes.append(len(topics))
                return await original(topics, timeout)

            c._conn.subscribe = subscribe  # type: ignore[method-assign]
            started = time.monotonic()
            codes = await c.read_route_codes([*names, "lotdeploy_absent"], timeout=1.0)
            took = time.monotonic() - started
            assert subscribes == [len(names) + 1]  # one SUBSCRIBE for all
            assert codes["lotdeploy_absent"] is None
            for name in names:
                assert f"DEFINE ROUTE {name} " in (codes[name] or "")
            assert took < 3.0  # the whole wait is bounded by one timeout, not one per route
            started = time.monotonic()
            codes = await c.read_route_codes(names, timeout=5.0)
            assert time.monotonic() - started < 2.0  # all came: no waiting out the timeout
            assert all(codes.values())

    run(main())


# -- on a real lab: the commands folded together still fail clearly ---------------------------


def _site_variant(lab: Any, name: str, **broker: str) -> Path:
    doc = yaml.safe_load(lab.site_file.read_text())
    doc["defaults"]["broker"].update(broker)
    path = lab.dir / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.root
def test_folded_commands_fail_clearly_and_an_apply_resumes(tmp_path: Path) -> None:
    """`mkdir` rides in the node-facts command and the reload in the install command: a
    failing `mkdir` or reload still fails the node naming the command and its message; after
    a failed reload the new files are recorded, the reload stays pending, and the next apply
    does it."""
    skip_unless_root()
    from tests.test_apply import lab_up, summary

    with lab_up(tmp_path, "--nodes", "2") as lab:
        nowhere = _site_variant(lab, "nowhere.yaml", release_dir="/run/coreflux/broker.pid/x")
        proc = lab.cli("apply", nowhere, "--auto-approve", "--json", expect=1)
        failed = {f["node"]: f for f in summary(proc)["failed"]}
        assert sorted(failed) == ["node1", "node2"]
        error = failed["node1"]["error"]
        assert failed["node1"]["step"] == "files"
        assert error.startswith(
            "node node1: cannot create /run/coreflux/broker.pid/x/releases: mkdir: "
        ), error
        assert error.endswith("Not a directory"), error
        assert not lab.state().nodes.get("node1") or not lab.state().nodes["node1"].release

        reloads = {n: lab.reloads(n) for n in lab.nodes}
        broken = _site_variant(lab, "broken.yaml", reload_command="echo no reload >&2; exit 3")
        proc = lab.cli("apply", broken, "--auto-approve", "--json", expect=1)
        failed = {f["node"]: f for f in summary(proc)["failed"]}
        assert failed["node1"]["step"] == "files"
        assert failed["node1"]["error"] == "node node1: `echo no …` exited with status 3: no reload"
        record = lab.state().nodes["node1"]
        assert record.release and "reload" in record.pending  # files recorded, reload owed
        assert lab.releases("node1").splitlines()[0] == f"releases/{record.release}"

        proc = lab.cli("apply", lab.site_file, "--auto-approve", "--json")
        assert not summary(proc)["failed"]
        assert {n: lab.reloads(n) for n in lab.nodes} == {n: reloads[n] + 1 for n in lab.nodes}
        assert not any(r.pending for r in lab.state().nodes.values())
        lab.wait_mesh()
        assert "No changes" in lab.cli("apply", lab.site_file, "--auto-approve").stdout


@pytest.mark.parametrize("learn", [True, False], ids=["not-known", "known-to-overwrite"])
def test_a_re_add_refused_in_other_words(learn: bool) -> None:
    """A broker whose refusal of a re-add does not say "already exists": where its re-add is
    not known, the listed route is removed and added again (as a remove-first would have)
    and "reject" is learned; where it is known to overwrite, the refusal is the node's error
    and the running route is left as it was."""

    async def main() -> None:
        async with lab_node(Dialect(readd="reject")) as node, admin_client(node) as other:
            await other.add_route(route("lotdeploy_a"))
            learned: list[str] = []

            def body(client: SyncBrokerClient) -> None:
                original = client._client.add_route

                async def add_route(text: str) -> Any:
                    try:
                        return await original(text)
                    except CommandFailed as exc:  # the same refusal, other words
                        reply = dataclasses.replace(exc.reply, message="route busy", errors=())
                        raise CommandFailed("lab", "addRoute", reply) from None

                client._client.add_route = add_route  # type: ignore[method-assign]
                new = {"lotdeploy_a": route("lotdeploy_a", 43)}
                learned.append(apply_routes(client, "lab", [], new, False, learn=learn))

            if learn:
                await in_thread(node, body)
                assert learned == ["reject"]
                assert "MESSAGE_VALIDITY_SEC '43'" in node.state.routes["lotdeploy_a"]
            else:
                before = node.state.routes["lotdeploy_a"]
                with pytest.raises(CommandFailed, match="route busy"):
                    await in_thread(node, body)
                assert node.state.routes["lotdeploy_a"] == before

    run(main())
