"""Plan entries for the cluster credential's phased rotation (no passphrase needed)."""

from __future__ import annotations

from lotdeploy.model import Site, username_for_version
from lotdeploy.plan.changes import Attr, Change
from lotdeploy.rotation import load_rotation
from lotdeploy.secret import SENSITIVE
from lotdeploy.workspace import Workspace


def credential_changes(site: Site, workspace: Workspace) -> tuple[list[Change], list[str]]:
    """Plan entries for the cluster credential (no passphrase needed)."""
    rotation = load_rotation(workspace, "creds")
    changes: list[Change] = []
    warnings: list[str] = []
    # The first password ("missing") is planned by plan.make itself; only rotations here.
    if rotation is None:
        return changes, warnings
    old, new = int(rotation.old), int(rotation.new)
    bases = sorted({n.username for n in site.nodes})
    done = rotation.applied_nodes()
    label = f"credential rotation phase {rotation.phase}"
    for node in site.nodes:
        if node.name in done:
            continue
        if rotation.phase == 1:
            for base in bases:
                changes.append(
                    Change(
                        "create",
                        "credential",
                        f"user {username_for_version(base, new)}",
                        node=node.name,
                        region=node.region,
                        reason=f"{label}: accept the new password beside the old one",
                        attrs=(Attr("password", SENSITIVE),),
                    )
                )
        elif rotation.phase == 2:
            changes.append(
                Change(
                    "update",
                    "credential",
                    "route credentials",
                    node=node.name,
                    region=node.region,
                    reason=f"{label}: routes switch to the new password",
                    attrs=(
                        Attr(
                            "USERNAME",
                            username_for_version(node.username, new),
                            username_for_version(node.username, old),
                        ),
                    ),
                )
            )
        else:
            for base in bases:
                changes.append(
                    Change(
                        "delete",
                        "credential",
                        f"user {username_for_version(base, old)}",
                        node=node.name,
                        region=node.region,
                        reason=f"{label}: remove the old password",
                    )
                )
    if not rotation.pending(n.name for n in site.nodes):
        warnings.append(
            f"{label} is applied on every node: run `lotdeploy creds rotate {site.source}` "
            "to continue"
        )
    return changes, warnings
