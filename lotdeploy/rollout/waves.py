"""Which nodes go in which wave: a pure function of the site's `rollout:` section.

Default waves (no explicit list): one canary node, then the rest of the canary's region,
then one region at a time (regions by name). Explicit waves name nodes, regions or tags as
`--limit` does; a node goes in the first wave that names it, and nodes no wave names go in a
last wave `rest`, so a node added to the site is never left out of a rollout.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lotdeploy.model import Node, RolloutPolicy, Site


@dataclass(frozen=True)
class Wave:
    name: str
    nodes: tuple[str, ...]  # sorted by name
    max_fail_percentage: int

    def allows(self, failed: int) -> bool:
        """Whether `failed` failed nodes stay within this wave's budget (Ansible's rule:
        the wave fails when the failed share is *above* max_fail_percentage)."""
        return failed == 0 or failed * 100 <= self.max_fail_percentage * len(self.nodes)


def _matches(node: Node, word: str) -> bool:
    return word in (node.name, node.region) or word in node.tags


def _canary(site: Site, policy: RolloutPolicy) -> Node:
    if policy.canary is not None:
        return site.node(policy.canary)
    first_region = min(n.region for n in site.nodes)
    return min((n for n in site.nodes if n.region == first_region), key=lambda n: n.name)


def compute_waves(site: Site, only: Iterable[str] | None = None) -> list[Wave]:
    """The rollout's waves over the site's nodes (those in `only`, when given); empty waves
    are dropped, so `--limit` keeps the order and the names of the waves it touches."""
    policy = site.rollout
    budget = policy.max_fail_percentage
    groups: list[tuple[str, list[str], int]] = []
    if policy.waves:
        placed: set[str] = set()
        for wave in policy.waves:
            names = [
                n.name
                for n in site.nodes
                if n.name not in placed and any(_matches(n, w) for w in wave.select)
            ]
            placed.update(names)
            limit = budget if wave.max_fail_percentage is None else wave.max_fail_percentage
            groups.append((wave.name, names, limit))
        rest = [n.name for n in site.nodes if n.name not in placed]
        groups.append(("rest", rest, budget))
    else:
        canary = _canary(site, policy)
        groups.append(("canary", [canary.name], budget))
        region = [n.name for n in site.nodes if n.region == canary.region and n is not canary]
        groups.append((canary.region, region, budget))
        for other in sorted({n.region for n in site.nodes} - {canary.region}):
            groups.append((other, [n.name for n in site.nodes if n.region == other], budget))
    chosen = None if only is None else set(only)
    waves = []
    for name, names, limit in groups:
        kept = sorted(n for n in names if chosen is None or n in chosen)
        if kept:
            waves.append(Wave(name, tuple(kept), limit))
    return waves


def wave_index(waves: list[Wave], name: str) -> int:
    """The position of the wave called `name` (or numbered `name`, from 1)."""
    for index, wave in enumerate(waves):
        if wave.name == name:
            return index
    if name.isdigit() and 1 <= int(name) <= len(waves):
        return int(name) - 1
    known = ", ".join(f"{i + 1}={w.name}" for i, w in enumerate(waves))
    raise ValueError(f"no wave '{name}' in this rollout (waves: {known})")
