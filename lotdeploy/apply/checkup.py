"""`lotdeploy doctor` across nodes, and `lotdeploy drift` helpers share this per-node plumbing:
open the node's transport, forward to its broker's admin port, run one async check.

Doctor's findings are stored in the node's state record (`broker`), so plan and apply use
them: apply removes a route before re-adding it where the broker refuses a re-add.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lotdeploy.apply.activate import admin_password, admin_session
from lotdeploy.broker.session import BrokerClient
from lotdeploy.doctor import (
    BrokerFacts,
    Finding,
    cluster_key_needs,
    findings,
    probe_broker,
    probe_for_apply,
)
from lotdeploy.model import Node, Site, username_for_version
from lotdeploy.node.session import on_nodes
from lotdeploy.secret import Secret
from lotdeploy.selection import chosen_nodes
from lotdeploy.state import NodeRecord, StateStore
from lotdeploy.transport.base import Transport, TransportFactory
from lotdeploy.workspace import Workspace


@dataclass
class DoctorResult:
    node: str
    facts: BrokerFacts | None = None
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "facts": self.facts.to_json() if self.facts else None,
            "findings": [f.to_json() for f in self.findings],
            "error": self.error,
        }


def _cluster_user(
    workspace: Workspace, node: Node, state_version: int
) -> tuple[str, Secret] | None:
    """The cluster credential, when the store can be opened without asking (doctor never
    prompts: LOTDEPLOY_PASSPHRASE set, or the store open already in this run)."""
    import os

    from lotdeploy.workspace import PASSPHRASE_ENV

    if workspace._store is None:
        if not os.environ.get(PASSPHRASE_ENV) or not workspace.secrets_path.exists():
            return None
        workspace.secrets()
    if workspace._store is None:
        return None
    from lotdeploy.credentials import password_secret_name

    password = workspace._store.get(password_secret_name(state_version))
    if password is None:
        return None
    return username_for_version(node.username, state_version), password


def doctor_node(site: Site, workspace: Workspace, node: Node, transport: Transport) -> DoctorResult:
    result = DoctorResult(node.name)
    secret = admin_password(site, node)
    version = StateStore(workspace).read().credential_version
    cluster_user = _cluster_user(workspace, node, version)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    with transport.forward(node.broker.admin_host, node.broker.admin_port) as port:

        async def probe() -> BrokerFacts:
            client = BrokerClient(
                node.name, "127.0.0.1", port, node.broker.admin_user, secret, request_ids="auto"
            )
            async with client:
                return await probe_broker(
                    client,
                    host="127.0.0.1",
                    port=port,
                    tls=None,
                    now_iso=now,
                    cluster_user=cluster_user,
                )

        facts = asyncio.run(probe())
    result.facts = facts
    result.findings = findings(facts, cluster_key_needs(site, node))
    return result


def capabilities_node(site: Site, node: Node, transport: Transport) -> BrokerFacts:
    """Apply's check before its first activation on a node: `probe_for_apply` (what
    activation needs, a few round trips) rather than doctor's full probe."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    # the node's admin session (kept for the users and routes that come next)
    with admin_session(site, node, transport) as client:
        facts: BrokerFacts = client.call(lambda raw: probe_for_apply(raw, now_iso=now))
    return facts


def run_doctor(
    site: Site,
    workspace: Workspace,
    transports: TransportFactory,
    parallelism: int = 10,
    only: set[str] | None = None,
) -> dict[str, DoctorResult]:
    """Doctor every chosen node (concurrently) and record each broker's facts in state."""
    nodes = chosen_nodes(site, only)

    found = on_nodes(
        nodes, transports, lambda node, t: doctor_node(site, workspace, node, t), parallelism
    )
    results = {
        name: DoctorResult(name, error=r) if isinstance(r, str) else r for name, r in found.items()
    }
    with StateStore(workspace).transaction() as state:
        for name, result in results.items():
            if result.facts is not None:
                record = state.nodes.setdefault(name, NodeRecord())
                found = result.facts.to_json()
                if found["readd"] == "unknown" and record.broker.get("readd") != "unknown":
                    # the scratch test could not tell: what apply learned still holds
                    found["readd"] = record.broker.get("readd", "unknown")
                record.broker = found
    return results
