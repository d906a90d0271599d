"""What a node runs, read live, against what apply recorded: drift entries and findings (pure).

A refresh (`apply`, which refreshes by default; `plan --refresh`; `drift`; `apply
--refresh-only`) reads each applied node once: the release `current` points at and the
digests of its files, the TLS files in the broker's directory, the broker's routes and
each owned route's code, and whether the broker still accepts each cluster user's login.
`reconcile` turns that into

* drift entries (`NodeRecord.drift`: `route/NAME`, `file/NAME`, `user/NAME`, `secret/NAME`,
  `release` -> missing | changed | extra | refused | rights): what the plan restores, and
  what `--refresh-only` records; and
* findings in words, one per difference, as `lotdeploy drift` prints them.

Nothing here reads a node: `lotdeploy.apply.drift` does, and passes the facts in.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lotdeploy.ownership import PREFIX_ONLY_NODE
from lotdeploy.state import NodeRecord

#: The route file's name in a release (the other files of a record are the TLS files).
ROUTE_FILE = "routes.lot"


@dataclass(frozen=True)
class NodeLive:
    """What one node showed. A fact that was not read is None (never guessed)."""

    #: the release id `current` points at (None: no `current`, or not one of ours)
    release: str | None
    #: file name -> sha256, of the record's release files as found under `current`
    release_files: dict[str, str] = field(default_factory=dict)
    #: file name -> sha256, of the record's TLS files as found in the broker's TLS directory
    tls_files: dict[str, str] = field(default_factory=dict)
    #: the broker's routes lotdeploy owns (lotdeploy.ownership) -> their code with the
    #: password masked (None: the broker does not republish it); None when not read
    routes: dict[str, str | None] | None = None
    #: cluster user -> whether the broker accepts its login; None when not checked
    users: dict[str, bool] | None = None
    #: confirm-or-revert timers armed or firing there (none is, between runs)
    timers: tuple[str, ...] = ()
    #: cluster user -> the named right flags it holds (a broker with the named rights
    #: model, doctor's `rights_model`); None when not read
    rights: dict[str, list[str]] | None = None
    #: the names in the broker's secret store (`-listSecrets`), read where a recorded route
    #: takes its password from there (lotdeploy.routesecret); None when not read
    secrets: list[str] | None = None


@dataclass
class Refresh:
    """The live read of the chosen nodes: per node its drift entries and findings, and the
    nodes that could not be read (their records are planned from as they are)."""

    drift: dict[str, dict[str, str]] = field(default_factory=dict)
    findings: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    #: nodes read (all facts of them, or as many as the node has)
    read: list[str] = field(default_factory=list)
    #: said once: what the read could not check (e.g. users without the passphrase)
    notes: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        return any(self.drift.values())


def reconcile(
    record: NodeRecord,
    live: NodeLive,
    expected_code: Callable[[Mapping[str, Any]], str],
    paths: Mapping[str, str],
    owns: Callable[[str], bool] = PREFIX_ONLY_NODE,
) -> tuple[dict[str, str], list[str]]:
    """The drift entries and findings of one node (`paths`: where the record's files are:
    {"release_dir", "tls_dir"}, for the words only; `owns`: which of the broker's routes
    are lotdeploy's, `Site.ownership` for the node)."""
    drift: dict[str, str] = {}
    found: list[str] = []
    current = posixpath.join(paths["release_dir"], "current")
    if record.release and live.release != record.release:
        drift["release"] = "changed" if live.release else "missing"
        found.append(
            f"release: current is {live.release or 'missing'}, apply left {record.release}"
        )
    for name, entry in sorted(record.files.items()):
        if name == ROUTE_FILE:
            have, where = live.release_files.get(name), posixpath.join(current, name)
        else:
            have, where = live.tls_files.get(name), posixpath.join(paths["tls_dir"], name)
        if have is None:
            drift[f"file/{name}"] = "missing"
            found.append(f"file {where}: missing")
        elif have != entry.get("sha256"):
            drift[f"file/{name}"] = "changed"
            found.append(f"file {where}: changed")
    if live.routes is not None:
        # a route recorded without attributes is one a refresh found extra: still extra
        applied = {name: attrs for name, attrs in record.routes.items() if attrs}
        for name in sorted(set(applied) - set(live.routes)):
            drift[f"route/{name}"] = "missing"
            found.append(f"route {name}: missing on the broker")
        for name in sorted(n for n in set(live.routes) - set(applied)):
            if owns(name):
                drift[f"route/{name}"] = "extra"
                found.append(f"route {name}: on the broker, but not applied by lotdeploy")
        for name in sorted(set(applied) & set(live.routes)):
            code = live.routes[name]
            if code is not None and code != expected_code(record.routes[name]):
                drift[f"route/{name}"] = "changed"
                found.append(f"route {name}: its code on the broker differs from what was applied")
    if live.timers:
        drift["timer"] = "armed"
        found.append(
            f"release: a confirm-or-revert timer of an earlier apply is still armed "
            f"({len(live.timers)}): it would put the node back on its own"
        )
    for user, accepted in sorted((live.users or {}).items()):
        if not accepted:
            drift[f"user/{user}"] = "refused"
            found.append(
                f"user {user}: the broker refuses its login (removed, or given another "
                "password, by hand)"
            )
    for user, flags in sorted((live.rights or {}).items()):
        if flags and f"user/{user}" not in drift:
            drift[f"user/{user}"] = "rights"
            found.append(
                f"user {user}: holds broker rights it does not need ({', '.join(flags)}), "
                "given by hand or by the build's default"
            )
    if live.secrets is not None:
        for name in sorted(secrets_read(record) - set(live.secrets)):
            drift[f"secret/{name}"] = "missing"
            found.append(
                f"secret {name}: missing from the broker's secret store (the routes that "
                "read their password from it cannot log in to their peers)"
            )
    return drift, found


def secrets_read(record: NodeRecord) -> set[str]:
    """The broker secrets the routes apply recorded on a node read their password from."""
    return {str(a["password_secret"]) for a in record.routes.values() if a.get("password_secret")}


def corrected(record: NodeRecord, drift: Mapping[str, str]) -> NodeRecord:
    """`record` as the plan must see it after a refresh: what is missing is not there, what
    is extra is (with no known attributes), and `drift` says what differs."""
    from copy import deepcopy

    out = deepcopy(record)
    out.drift = dict(drift)
    for key, kind in drift.items():
        what, _, name = key.partition("/")
        if what == "route" and kind == "missing":
            out.routes.pop(name, None)
        elif what == "route" and kind == "extra":
            out.routes.setdefault(name, {})
        elif what == "user" and kind == "refused" and name in out.users:
            out.users = [u for u in out.users if u != name]
    return out
