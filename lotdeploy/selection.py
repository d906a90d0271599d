"""`--limit` and `--exclude`: which nodes a command acts on, by node name, region or tag."""

from __future__ import annotations

from collections.abc import Iterable

from lotdeploy.errors import LotdeployError
from lotdeploy.model import Node, Site


def _matches(site: Site, word: str) -> set[str]:
    return {n.name for n in site.nodes if word in (n.name, n.region) or word in n.tags}


def select_nodes(
    site: Site, limit: Iterable[str] = (), exclude: Iterable[str] = ()
) -> set[str] | None:
    """The chosen node names, or None for every node. Each word names a node, a region or
    a tag (comma-separated lists allowed); a word that matches nothing is an error, so a
    typo never silently selects nothing or everything."""

    def words(flag: str, values: Iterable[str]) -> list[str]:
        found = [w.strip() for v in values for w in v.split(",")]
        if "" in found:
            # `--limit ""` (an unset variable) would otherwise mean "no limit": every node
            raise LotdeployError(
                f"{flag}: an empty name selects nothing; name nodes, regions or tags "
                "(comma-separated, no empty item)"
            )
        return found

    include, leave_out = words("--limit", limit), words("--exclude", exclude)
    if not include and not leave_out:
        return None
    chosen = set() if include else {n.name for n in site.nodes}
    for flag, group in (("--limit", include), ("--exclude", leave_out)):
        for word in group:
            found = _matches(site, word)
            if not found:
                raise LotdeployError(f"{flag} {word}: no node, region or tag of that name")
            chosen = chosen | found if flag == "--limit" else chosen - found
    if not chosen:
        raise LotdeployError("--limit/--exclude leave no node to act on")
    return chosen


def chosen_nodes(site: Site, only: set[str] | None) -> list[Node]:
    """The site's nodes that `only` (from `select_nodes`; None: every node) names, in the
    site's order."""
    return [n for n in site.nodes if only is None or n.name in only]
