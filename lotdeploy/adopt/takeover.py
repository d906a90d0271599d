"""The take-over: from a hand-made cluster (imported) to lotdeploy's conventions, phased.

Three changes make a take-over, each of them one that a link's two ends must agree on, so
none may be made in one step while a rollout goes wave by wave (docs/rollout.md, "No window
of broken links"). Each is a phased rotation, the same machinery as the credential and CA
rotations (lotdeploy.rotation): phase 1 makes every broker *accept* the new, phase 2 makes
the routes *require* it, phase 3 drops the old; a phase starts only once the previous one
runs on every node.

=========  ===================================  ==============================  ============
rotation   phase 1 (accept)                     phase 2 (require)               phase 3
=========  ===================================  ==============================  ============
creds      every broker gets the new user       routes log in as it             old user
           (a generated password)                                               removed
tls        each node the site puts on TLS gets  routes to it use TLS            (nothing)
           its certificate and opens its TLS    (its TLS port)
           listener; peers still come in plain
names      (nothing)                            adopted routes take             (nothing)
                                                lotdeploy's names: the new
                                                route is added and Connected
                                                before the old one goes
=========  ===================================  ==============================  ============

The rotations run together: `takeover` starts the ones needed, then per phase it applies
the phase wave by wave with the verify gate after each wave (`lotdeploy apply`'s rollout,
lotdeploy.rollout.run; a failed wave is rolled back), marks the phase applied and moves all
of them on. The desired state of each phase comes from the site bound to the workspace
(lotdeploy.sitefacts: the tls rotation's plain ports, the names rotation's phase).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from lotdeploy.credentials import advance_creds_rotation
from lotdeploy.errors import LotdeployError
from lotdeploy.model import Site
from lotdeploy.rotation import (
    LAST_PHASE,
    RotationKind,
    advance_rotation,
    require_phase_complete,
    start_rotation,
)
from lotdeploy.state import State, StateStore
from lotdeploy.workspace import Workspace

#: The rotations a take-over runs, in the order they are started.
KINDS: tuple[RotationKind, ...] = ("creds", "tls", "names")
#: Those only the take-over runs (creds is `creds rotate`'s too).
_OWN: tuple[RotationKind, ...] = ("tls", "names")
#: What each phase does, per rotation (said before each phase).
_WORDS: dict[int, dict[str, str]] = {
    1: {
        "creds": "every broker takes the new cluster user",
        "tls": "the nodes get their certificates and open TLS beside plain",
    },
    2: {
        "creds": "the routes log in as the new user",
        "tls": "the routes go over TLS",
        "names": "the adopted routes take lotdeploy's names (each new route Connected before "
        "the old one goes)",
    },
    3: {"creds": "the old cluster user leaves the brokers"},
}
PHASE_NAMES = {1: "accept", 2: "require", 3: "drop"}


def phase_words(phase: int, kinds: list[str]) -> str:
    """What `phase` does for the rotations `kinds`, in one line."""
    said = [_WORDS[phase][k] for k in KINDS if k in kinds and k in _WORDS[phase]]
    return f"{PHASE_NAMES[phase]}: " + ("; ".join(said) if said else "nothing to change")


def work_kinds(work: TakeoverWork) -> list[str]:
    return [
        k
        for k, on in (("creds", work.password), ("tls", bool(work.tls)), ("names", work.rename))
        if on
    ]


def replace_in_place(state: State) -> dict[str, bool]:
    """node -> whether its broker is known to replace a re-added route in place (as doctor
    found, or apply learned from a change): where it does not, or it is not known yet, each
    route a phase changes may be removed, then added, and messages published on the node in
    between do not reach that peer."""
    return {
        name: record.broker.get("readd") == "overwrite"
        for name, record in sorted(state.nodes.items())
        if record.broker
    }


class TakeoverError(LotdeployError):
    """A take-over cannot start or go on (the reason says what to do)."""


@dataclass
class TakeoverWork:
    """What the take-over changes: a generated password, TLS for these nodes (their plain
    port), lotdeploy's names for the adopted routes."""

    password: bool = False
    tls: dict[str, int] = field(default_factory=dict)
    rename: bool = False

    def __bool__(self) -> bool:
        return self.password or bool(self.tls) or self.rename

    def lines(self) -> list[str]:
        out = []
        if self.password:
            out.append("the typed cluster password -> a generated one (a new cluster user)")
        if self.tls:
            out.append(f"plain-text links -> TLS, into {', '.join(sorted(self.tls))}")
        if self.rename:
            out.append("the adopted routes -> lotdeploy's names and client ids")
        return out


def plan_work(site: Site, state: State, password: bool, rename: bool) -> TakeoverWork:
    """What a take-over of `site` (bound) has to do, from what the workspace records: a
    password an import adopted (`password`: replace it), nodes the site puts on TLS that
    their peers' recorded routes reach in plain, adopted routes (`rename`)."""
    work = TakeoverWork(password=password and state.credential_adopted)
    plain: dict[str, list[int]] = {}
    for record in state.nodes.values():
        for attrs in record.routes.values():
            if attrs and not attrs.get("use_tls"):
                plain.setdefault(str(attrs.get("peer")), []).append(int(attrs["broker_port"]))
    for node in site.nodes:
        if node.tls and plain.get(node.name):
            work.tls[node.name] = max(set(plain[node.name]), key=plain[node.name].count)
    work.rename = rename and any(a.routes for a in state.adopted.values())
    return work


def running(state: State) -> dict[str, int]:
    """The take-over's rotations in progress: kind -> phase."""
    return {k: r.phase for k in KINDS if (r := state.rotation(k)) is not None}


def phase_of(state: State) -> int | None:
    """The phase the take-over is in (None: none runs); refused when its rotations are in
    different phases (one was moved on by hand)."""
    phases = running(state)
    if not phases:
        return None
    if len(set(phases.values())) != 1:
        shown = ", ".join(f"{k} in phase {p}" for k, p in sorted(phases.items()))
        raise TakeoverError(
            f"the take-over's rotations are in different phases ({shown}): move them to one "
            "phase with `lotdeploy creds rotate`, or finish them, before `takeover` goes on"
        )
    return next(iter(phases.values()))


def start(site: Site, workspace: Workspace, work: TakeoverWork, now: datetime) -> None:
    """Start the rotations the work needs, all in phase 1."""
    state = StateStore(workspace).read()
    if running(state):
        raise TakeoverError("a take-over is under way already: `takeover` goes on with it")
    if state.rotation("ca") is not None:
        raise TakeoverError("a CA rotation is under way: finish it first (`certs rotate-ca`)")
    if work.password:
        advance_creds_rotation(site, workspace, now)  # phase 1: the new user and password
    with StateStore(workspace).transaction() as current:
        if work.tls:
            rotation = start_rotation(current, "tls", "plain", "tls", now)
            rotation.detail = {"ports": dict(sorted(work.tls.items()))}
        if work.rename:
            start_rotation(current, "names", "adopted", "lotdeploy", now)


def mark_applied(workspace: Workspace, nodes: list[str]) -> None:
    """The phase runs on every node (its rollout completed): what apply marks for the
    credential rotation by itself, marked for the take-over's own rotations."""
    with StateStore(workspace).transaction() as state:
        for kind in _OWN:
            rotation = state.rotation(kind)
            if rotation is not None:
                done = rotation.applied.setdefault(str(rotation.phase), [])
                rotation.applied[str(rotation.phase)] = sorted(set(done) | set(nodes))


def advance(site: Site, workspace: Workspace, now: datetime) -> int | None:
    """Move every rotation of the take-over one phase on (refused while the phase is not
    applied everywhere); after the last phase they finish: the names rotation leaves the
    old route names among lotdeploy's (to remove, should one come back), the password is no
    longer one an import took over. The new phase, or None when finished."""
    nodes = [n.name for n in site.nodes]
    command = f"lotdeploy takeover {site.source}"
    state = StateStore(workspace).read()
    phase = phase_of(state)
    if phase is None:
        return None
    for kind in KINDS:  # all or none move on: check every one first
        rotation = state.rotation(kind)
        if rotation is not None:
            require_phase_complete(rotation, nodes, command)
    if state.rotation("creds") is not None:
        advance_creds_rotation(site, workspace, now)
    with StateStore(workspace).transaction() as current:
        for kind in _OWN:
            if current.rotation(kind) is not None:
                advance_rotation(current, kind, nodes, now, command)
        if phase == LAST_PHASE:
            _finish(current, state)
    return None if phase == LAST_PHASE else phase + 1


def _finish(state: State, before: State) -> None:
    if before.rotation("names") is not None:
        for adopted in state.adopted.values():
            for peer, route in adopted.routes.items():
                adopted.remove.setdefault(route, f"the route to {peer} before lotdeploy named it")
            adopted.routes.clear()
            adopted.client_ids.clear()
    if before.rotation("creds") is not None:
        state.credential_adopted = False
