"""`probe_broker` detects every lab dialect with the real client, touches no other route, and
its facts and findings say what an operator needs to know.

Every broker here runs in-process on 127.0.0.1 with port 0; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lotdeploy import __version__
from lotdeploy.broker.session import BrokerClient
from lotdeploy.doctor import (
    SCRATCH_ROUTE,
    BrokerFacts,
    Finding,
    cluster_key_needs,
    findings,
    key_problems,
    missing_keys,
    needed_cluster_keys,
    needs_remove_before_add,
    probe_broker,
    scratch_route_text,
)
from lotdeploy.lab.broker.dialect import DIALECT_1X, DIALECT_2X, Dialect
from lotdeploy.lab.broker.server import LabConfig, LabNode
from lotdeploy.protocol import CLUSTER_KEY_ORDER, parse_route_template
from lotdeploy.secret import Secret
from lotdeploy.spec import load_site_text
from tests.broker_fixtures import cluster_route, run

HOST = "127.0.0.1"
ADMIN_PASSWORD = "doctor-admin-pass"
CLUSTER_PASSWORD = "doctor-cluster-pass"
NOW = "2026-12-01T12:00:00+00:00"

DIALECTS = [
    DIALECT_2X,
    DIALECT_1X,
    Dialect(echo_request_id=False),
    Dialect(readd="overwrite"),
    Dialect(route_code_missing=frozenset({"USE_TLS"})),
    Dialect(
        replies="text",
        echo_request_id=False,
        readd="overwrite",
        route_code_missing=frozenset({"USE_TLS", "MESSAGE_VALIDITY_SEC"}),
    ),
    # what builds differ in (issue 21): each knob detected by a read-only look
    Dialect(verbs="exact", cluster_topics="seed", bad_login_code=5),
    Dialect(
        replies="text",
        cluster_topics="coreflux",
        version_topic=False,
        secret_store=False,
        rights="named",
    ),
]
#: The monitoring topics each scheme publishes (docs/lab-broker.md).
MONITORING = {
    "none": (),
    "seed": tuple(f"$SYS/broker/cluster/{t}" for t in ("nodes", "status", "sync")),
    "coreflux": tuple(
        f"$SYS/Coreflux/Cluster/{t}"
        for t in ("IsLeader", "Leader", "Members", "Role", "Status", "Term")
    ),
}

SITE = """\
site: doctor-test
defaults:
  tls: false
nodes:
  - name: eu1
    address: 10.0.0.1
  - name: eu2
    address: 10.0.0.2
    tls: true
  - name: eu3
    address: 10.0.0.3
"""


@contextlib.asynccontextmanager
async def lab_node(
    dialect: Dialect = DIALECT_2X,
    *,
    admin_user: str = "root",
    admin_password: str = ADMIN_PASSWORD,
    allow_anonymous: bool = False,
) -> AsyncIterator[LabNode]:
    """A started in-process lab broker on 127.0.0.1, any free port; stopped (bounded) after."""
    node = LabNode(
        LabConfig(
            bind=HOST,
            port=0,
            admin_user=admin_user,
            admin_password=Secret(admin_password),
            allow_anonymous=allow_anonymous,
            status_interval=0.5,
            link_backoff_max=0.5,
            dialect=dialect,
        )
    )
    await asyncio.wait_for(node.start(), 10)
    try:
        yield node
    finally:
        await asyncio.wait_for(node.stop(), 15)


def admin_client(
    node: LabNode, user: str = "root", password: str = ADMIN_PASSWORD, **kwargs: Any
) -> BrokerClient:
    assert node.port is not None
    return BrokerClient(
        "lab", HOST, node.port, user, Secret(password), reply_timeout=5, connect_timeout=5, **kwargs
    )


async def probe(
    node: LabNode, client: BrokerClient, cluster_user: tuple[str, Secret] | None = None
) -> BrokerFacts:
    assert node.port is not None
    return await probe_broker(
        client,
        host=HOST,
        port=node.port,
        tls=None,
        now_iso=NOW,
        cluster_user=cluster_user,
        timeout=2.0,
    )


def other_route(missing: frozenset[str]) -> str:
    """A pre-existing route the probe must leave alone (a dead peer; only offered keys)."""
    text = cluster_route("Other", HOST, 1, "other-id", password=CLUSTER_PASSWORD)
    return "\n".join(ln for ln in text.splitlines() if not any(f" {k} " in ln for k in missing))


# -- every dialect, detected exactly ---------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.label)
def test_probe_detects_the_dialect_and_touches_no_other_route(
    dialect: Dialect, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger="lotdeploy")  # amqtt's own debug logs show packets
    throwaway = "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"
    monkeypatch.setattr("lotdeploy.doctor.secrets.token_hex", lambda _n: throwaway)

    async def body() -> BrokerFacts:
        async with lab_node(dialect) as node, admin_client(node, request_ids="auto") as c:
            await c.add_route(other_route(dialect.route_code_missing))
            await c.add_user("cluster", Secret(CLUSTER_PASSWORD))
            spec_before = node.routes.links["Other"].spec
            code_before = node.state.routes["Other"]
            ids_before = c.request_ids

            facts = await probe(node, c, ("cluster", Secret(CLUSTER_PASSWORD)))

            assert list(node.routes.links) == ["Other"]
            assert node.routes.links["Other"].spec == spec_before
            assert node.state.routes == {"Other": code_before}
            assert c.request_ids is ids_before  # the caller's setting is kept
            leftover = await c.read_route_code(SCRATCH_ROUTE, timeout=0.5)
            assert not leftover
            assert (await c.command("listRoutes")).success  # the session still works
            return facts

    facts = run(body())
    assert facts == BrokerFacts(
        reply_format=dialect.replies,
        request_id_echo=dialect.echoes_request_id,
        readd=dialect.readd,
        cluster_keys=frozenset(dialect.offered_keys),
        version=f"lab-{__version__} {dialect.label}" if dialect.version_topic else None,
        route_code_shows_password=True,  # the lab republishes the code as sent
        route_code_readable_by_cluster_user=False,  # $SYS refused to non-admins
        factory_admin_accepted=False,
        anonymous_accepted=False,
        checked_at=NOW,
        verbs_any_case=dialect.verbs == "any",
        verbs_kebab=dialect.verbs == "any",
        cluster_topics=MONITORING[dialect.cluster_topics],
        bad_login_code=dialect.bad_login_code,
        secret_store=dialect.secret_store,
        rights_model="named" if dialect.rights == "named" else "admin-only",
    )
    assert needs_remove_before_add(facts.readd) is (dialect.readd != "overwrite")
    assert BrokerFacts.from_json(json.loads(json.dumps(facts.to_json()))) == facts
    for text in [*(f.message for f in findings(facts)), *caplog.messages]:
        assert CLUSTER_PASSWORD not in text and ADMIN_PASSWORD not in text
        assert throwaway not in text
    assert throwaway not in json.dumps(facts.to_json())


def test_an_existing_route_of_the_scratch_name_is_left_alone() -> None:
    async def body() -> None:
        async with lab_node() as node, admin_client(node) as c:
            text = cluster_route(SCRATCH_ROUTE, HOST, 1, "theirs", password=CLUSTER_PASSWORD)
            await c.add_route(text)
            before = node.state.routes[SCRATCH_ROUTE]
            facts = await probe(node, c)
            assert facts.readd == "unknown" and facts.route_code_shows_password is None
            assert node.state.routes == {SCRATCH_ROUTE: before}
            assert node.routes.links[SCRATCH_ROUTE].spec.client_id == "theirs"
            assert not needs_remove_before_add(facts.readd)  # in place, learned from it

    run(body())


def test_the_scratch_route_is_removed_when_the_probe_fails_midway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body() -> None:
        async with lab_node() as node, admin_client(node) as c:

            async def broken(name: str, timeout: float = 10.0) -> str | None:
                assert name in node.routes.links  # the scratch route is there right now
                raise RuntimeError("boom")

            monkeypatch.setattr(c, "read_route_code", broken)
            with pytest.raises(RuntimeError, match="boom"):
                await probe(node, c)
            assert node.routes.links == {} and node.state.routes == {}

    run(body())


def test_a_refused_scratch_route_is_not_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    """An answered refusal added nothing: no -removeRoute follows (it could hit a route of
    that name someone else added meanwhile)."""

    async def body() -> None:
        async with lab_node() as node, admin_client(node) as c:
            sent: list[str] = []
            command = c.command

            async def spy(verb: str, argument: str = "") -> Any:
                sent.append(verb)
                if verb == "addRoute":
                    argument = argument.replace("WITH BROKER_PORT", "WITH NO_SUCH_KEY")
                return await command(verb, argument)

            monkeypatch.setattr(c, "command", spy)
            facts = await probe(node, c)
            assert facts.readd == "unknown" and facts.route_code_shows_password is None
            assert sent.count("addRoute") == 1 and "removeRoute" not in sent
            assert node.routes.links == {}

    run(body())


def test_scratch_route_uses_only_offered_keys_and_a_dead_peer() -> None:
    password = Secret("throwaway-password-1")
    offered = frozenset(CLUSTER_KEY_ORDER) - {"MESSAGE_VALIDITY_SEC"}
    text = scratch_route_text(SCRATCH_ROUTE, offered, password)
    keys = parse_route_template(text).keys
    assert set(keys) == offered - {"USE_TLS"}
    assert 'WITH BROKER_ADDRESS "127.0.0.1"' in text and "WITH BROKER_PORT '9'" in text
    assert text.startswith(f"DEFINE ROUTE {SCRATCH_ROUTE} WITH TYPE MQTT_CLUSTER\n")


# -- logins: factory admin, anonymous, the cluster user -----------------------------------------


def test_factory_admin_accepted_is_detected() -> None:
    """A broker that takes root/coreflux, probed through another admin login."""

    async def body() -> None:
        async with lab_node(admin_user="admin") as node:
            async with admin_client(node, user="admin") as c:
                await c.add_user("root", Secret("coreflux"))
                facts = await probe(node, c)
            assert facts.factory_admin_accepted is True and not facts.admin_is_factory
            words = [f for f in findings(facts) if f.check == "factory-admin"]
            assert words == [
                Finding(
                    "warning",
                    "factory-admin",
                    "broker still accepts the factory admin credentials root/coreflux: "
                    "change the admin password",
                )
            ]

    run(body())


def test_site_using_the_factory_admin_is_a_finding_not_a_probe() -> None:
    async def body() -> None:
        async with (
            lab_node(admin_password="coreflux") as node,
            admin_client(node, password="coreflux") as c,
        ):
            facts = await probe(node, c)
        assert facts.factory_admin_accepted is None and facts.admin_is_factory
        (finding,) = [f for f in findings(facts) if f.check == "factory-admin"]
        assert finding.severity == "warning"
        assert "the site logs in to this broker with the factory admin credentials" in (
            finding.message
        )

    run(body())


def test_anonymous_logins_detected() -> None:
    async def body() -> None:
        async with lab_node(allow_anonymous=True) as node, admin_client(node) as c:
            facts = await probe(node, c)
        assert facts.anonymous_accepted is True and facts.factory_admin_accepted is False
        (finding,) = [f for f in findings(facts) if f.check == "anonymous"]
        assert finding.severity == "warning" and "accepts anonymous logins" in finding.message

    run(body())


def test_cluster_user_that_cannot_log_in_is_not_checked() -> None:
    async def body() -> None:
        async with lab_node() as node, admin_client(node) as c:
            facts = await probe(node, c, ("cluster", Secret("not-created-yet-pass")))
        assert facts.route_code_readable_by_cluster_user is None
        (finding,) = [f for f in findings(facts) if f.check == "route-code-readers"]
        assert finding.message.startswith("not checked")

    run(body())


# -- what the site needs --------------------------------------------------------------------------


def test_needed_keys_and_the_missing_key_finding(tmp_path: Path) -> None:
    site = load_site_text(SITE, "site.yaml", tmp_path).site
    eu1, eu2 = site.node("eu1"), site.node("eu2")
    base = {"BROKER_ADDRESS", "BROKER_PORT", "CLIENT_ID", "USERNAME", "PASSWORD"}
    base.add("MESSAGE_VALIDITY_SEC")
    assert needed_cluster_keys(site, eu1) == base | {"USE_TLS"}  # eu1 links to eu2 (TLS)
    assert needed_cluster_keys(site, eu2) == base  # eu2's peers listen in plain MQTT
    assert cluster_key_needs(site, eu1)["USE_TLS"] == ("eu2",)

    lacking = frozenset(CLUSTER_KEY_ORDER) - {"USE_TLS"}
    facts = _facts(cluster_keys=lacking)
    assert missing_keys(facts, site, eu1) == ["USE_TLS"]
    assert missing_keys(facts, site, eu2) == []
    errors = [f for f in findings(facts, cluster_key_needs(site, eu1)) if f.severity == "error"]
    assert errors == [
        Finding(
            "error",
            "cluster-keys",
            "broker lacks CLUSTER_CONFIG key USE_TLS, which the site needs for links to eu2 "
            "(tls: true): upgrade the broker or change the site",
        )
    ]
    assert key_problems(facts, site, eu1) == [f"node eu1: {errors[0].message}"]
    assert key_problems(facts, site, eu2) == []
    plain = [f for f in findings(facts, needed_cluster_keys(site, eu1)) if f.severity == "error"]
    assert plain[0].message.startswith("broker lacks CLUSTER_CONFIG key USE_TLS, which the site")
    assert not [f for f in findings(facts, needed_cluster_keys(site, eu2)) if f.severity == "error"]

    unread = _facts(cluster_keys=frozenset(), cluster_keys_read=False)
    assert missing_keys(unread, site, eu1) == []
    (warning,) = [f for f in findings(unread, {"USE_TLS"}) if f.check == "cluster-keys"]
    assert warning.severity == "warning" and "-routeCode MQTT_CLUSTER" in warning.message


def test_findings_words_for_route_code_and_request_ids() -> None:
    facts = _facts(route_code_shows_password=True, request_id_echo=False, readd="unknown")
    by_check = {f.check: f for f in findings(facts)}
    assert by_check["route-code-password"].message == (
        "route code on $SYS/Coreflux/Routes/<Name> shows the cluster password to anyone "
        "allowed to read $SYS: give $SYS rights to the admin only"
    )
    assert by_check["request-id"].severity == "warning"
    assert by_check["readd"].severity == "warning"
    assert {f.severity for f in findings(_facts())} == {"ok"}


# -- the stored record ---------------------------------------------------------------------------


def _facts(**changes: Any) -> BrokerFacts:
    fields: dict[str, Any] = {
        "reply_format": "json",
        "request_id_echo": True,
        "readd": "reject",
        "cluster_keys": frozenset(CLUSTER_KEY_ORDER),
        "version": "2.1.0",
        "route_code_shows_password": False,
        "route_code_readable_by_cluster_user": False,
        "factory_admin_accepted": False,
        "anonymous_accepted": False,
        "checked_at": NOW,
    }
    fields.update(changes)
    return BrokerFacts(**fields)


def test_facts_round_trip() -> None:
    for facts in (
        _facts(),
        _facts(
            reply_format="text",
            readd="overwrite",
            version=None,
            route_code_shows_password=None,
            route_code_readable_by_cluster_user=None,
            factory_admin_accepted=None,
            admin_is_factory=True,
            anonymous_accepted=True,
            cluster_keys=frozenset(),
            cluster_keys_read=False,
        ),
    ):
        doc = facts.to_json()
        assert BrokerFacts.from_json(doc) == facts
        assert BrokerFacts.from_json(json.dumps(doc)) == facts
        assert doc["cluster_keys"] == sorted(doc["cluster_keys"])


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ({"reply_format": "xml"}, "reply_format must be one of json, text"),
        ({"readd": "merge"}, "readd must be one of"),
        ({"request_id_echo": "yes"}, "request_id_echo must be true or false"),
        ({"anonymous_accepted": 1}, "anonymous_accepted must be true, false or null"),
        ({"cluster_keys": "USE_TLS"}, "cluster_keys must be a list"),
        ({"cluster_keys": ["use tls"]}, "cluster_keys must be a list of key names"),
        ({"checked_at": "yesterday"}, "checked_at is not an ISO 8601 time"),
        ({"version": 2}, "version must be a short string"),
        ({"format": 3}, "record format 3"),
        ({"cluster_topics": ["x/y"]}, "cluster_topics must be a list of \\$SYS topics"),
        ({"bad_login_code": "4"}, "bad_login_code must be a CONNACK code"),
        ({"rights_model": "root"}, "rights_model must be one of named, admin-only"),
        ({"format": None}, "no record format number"),
        ({"extra": True}, "unknown field"),
    ],
)
def test_damaged_facts_are_refused(damage: dict[str, Any], problem: str) -> None:
    doc = _facts().to_json()
    doc.update(damage)
    with pytest.raises(ValueError, match=problem):
        BrokerFacts.from_json(doc)


def test_damaged_facts_missing_fields_and_non_objects_are_refused() -> None:
    doc = _facts().to_json()
    del doc["readd"]
    with pytest.raises(ValueError, match="missing field"):
        BrokerFacts.from_json(doc)
    for bad in ("[]", "not json", 3, None):
        with pytest.raises(ValueError, match="broker facts"):
            BrokerFacts.from_json(bad)


def test_a_format_1_record_reads_with_the_new_checks_not_checked() -> None:
    doc = _facts().to_json()
    for key in ("verbs_any_case", "verbs_kebab", "cluster_topics", "bad_login_code"):
        del doc[key]
    for key in ("secret_store", "rights_model"):
        del doc[key]
    doc["format"] = 1
    facts = BrokerFacts.from_json(doc)
    assert facts == _facts() and facts.cluster_topics is None
    words = {f.check: f.message for f in findings(facts)}
    assert words["rights"].startswith("not checked") and words["connack"].startswith("not")


def test_findings_say_what_lotdeploy_does_about_each_difference() -> None:
    facts = _facts(
        verbs_any_case=False,
        verbs_kebab=False,
        cluster_topics=("$SYS/broker/cluster/status",),
        bad_login_code=5,
        secret_store=True,
        rights_model="named",
    )
    by_check = {f.check: f for f in findings(facts)}
    assert "lotdeploy always sends the documented spelling" in by_check["verb-case"].message
    assert "lower case is refused" in by_check["verb-case"].message
    assert "verify and status show them" in by_check["cluster-topics"].message
    assert "CONNACK 5 (not authorised)" in by_check["connack"].message
    assert "GET SECRET" in by_check["secret-store"].message
    assert "as the admin" in by_check["rights"].message
    assert {f.severity for f in by_check.values()} == {"ok"}
    odd = {f.check: f for f in findings(_facts(bad_login_code=135, cluster_topics=()))}
    assert odd["connack"].severity == "warning"
    assert "probes and -listRoutes alone" in odd["cluster-topics"].message
