"""The client-id proofs (lotdeploy.clientids) never claim what the ids themselves deny:
whenever a proof says unique (plain), making every id and checking it agrees."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from lotdeploy.clientids import plain_by_construction, unique_by_construction
from lotdeploy.values import NAME_MAX_BYTES, Role, problem

#: Short names over a few characters, separators included, so collisions are likely.
NAMES = st.one_of(
    st.lists(st.text(alphabet="ab-_.t o/", min_size=1, max_size=6), min_size=2, max_size=6),
    st.lists(st.text(alphabet="abn01", min_size=1, max_size=4), min_size=2, max_size=6),
)
LITERALS = st.one_of(
    st.text(alphabet="ab-_to/ '", max_size=4), st.text(alphabet="-_.to", max_size=4)
)
FIELDS = st.sampled_from(["node", "peer", "site", "region", "peer_region"])


@st.composite
def formats(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.tuples(LITERALS, FIELDS), max_size=3))
    parts += [(draw(LITERALS), "node"), (draw(LITERALS), "peer")]  # usually both
    parts = draw(st.permutations(parts))[: draw(st.integers(1, len(parts)))]
    tail = draw(LITERALS)
    escape = lambda text: text.replace("{", "{{").replace("}", "}}")  # noqa: E731
    return "".join(escape(lit) + "{" + field + "}" for lit, field in parts) + escape(tail)


def _ids(fmt: str, nodes: list[str], region_of: dict[str, str]) -> list[str]:
    return [
        fmt.format(node=a, peer=b, site="s", region=region_of[a], peer_region=region_of[b])
        for a in nodes
        for b in nodes
        if a != b
    ]


@settings(max_examples=400, deadline=None)
@given(formats(), NAMES, st.lists(st.sampled_from(["eu", "us-1", "t-o"]), min_size=6))
def test_proofs_agree_with_the_ids(fmt: str, names: list[str], regions: list[str]) -> None:
    nodes = sorted(set(names))
    region_of = {name: regions[i % len(regions)] for i, name in enumerate(nodes)}
    values = {
        "node": nodes,
        "peer": nodes,
        "site": ["s"],
        "region": sorted(set(region_of.values())),
        "peer_region": sorted(set(region_of.values())),
    }
    ids = _ids(fmt, nodes, region_of)
    if unique_by_construction(fmt, values):
        assert len(set(ids)) == len(ids)
    if plain_by_construction(fmt, values):
        assert all(problem(i, Role.LOT_STRING, NAME_MAX_BYTES) is None for i in ids)
        assert all(problem(i, Role.COMMAND_TOKEN, NAME_MAX_BYTES) is None for i in ids)


def test_the_default_format_is_proven_for_ordinary_names() -> None:
    names = ["plant-a-1", "plant-a-2", "plant-b-1"]
    values = {"node": names, "peer": names, "site": ["s"], "region": ["eu"], "peer_region": ["eu"]}
    assert unique_by_construction("{node}-to-{peer}", values)
    assert plain_by_construction("{node}-to-{peer}", values)


def test_what_is_not_proven() -> None:
    names = ["a", "a-to-b", "b", "b-to-c", "c"]
    values = {"node": names, "peer": names, "site": ["s"], "region": ["r"], "peer_region": ["r"]}
    assert not unique_by_construction("{node}-to-{peer}", values)  # a-to-b-to-c twice
    assert not unique_by_construction("{node}{peer}", values)  # no separator
    assert not unique_by_construction("{node}-x", values)  # no {peer}
    assert not unique_by_construction("{node!r}-{peer}", values)
    assert not plain_by_construction("{node} {peer}", values)  # a space
    assert not plain_by_construction("-{node}-{peer}", values)  # leading dash
    long = ["n" * (NAME_MAX_BYTES // 2)] * 2
    assert not plain_by_construction("{node}-{peer}", {"node": long, "peer": long, "site": ["s"]})
    assert string.Formatter  # the proofs read formats with string.Formatter
