"""The topology as a Mermaid or Graphviz diagram: nodes grouped by region, links labelled."""

from __future__ import annotations

from lotdeploy.model import Site


def _edges(site: Site) -> list[tuple[str, str, str, str]]:
    """Undirected edges (a, b, label, link_class); label 'N s' or 'a->b N s / b->a M s'."""
    validity = {(link.source, link.target): link for link in site.links}
    edges: list[tuple[str, str, str, str]] = []
    for (a, b), link in sorted(validity.items()):
        if a > b:
            continue
        back = validity.get((b, a))
        if back is None or back.message_validity_sec == link.message_validity_sec:
            label = f"{link.message_validity_sec}s"
        else:
            label = f"{link.message_validity_sec}s / {back.message_validity_sec}s"
        edges.append((a, b, label, link.link_class))
    return edges


def _ident(name: str) -> str:
    return name.replace("-", "_")


def mermaid(site: Site) -> str:
    out = ["graph LR"]
    for region in site.regions:
        members = [n for n in site.nodes if n.region == region]
        if not members:
            continue
        out.append(f"    subgraph region_{_ident(region)} [{region}]")
        for node in members:
            tls = " TLS" if node.tls else ""
            out.append(
                f'        {_ident(node.name)}["{node.name}<br/>{node.address}:{node.port}{tls}"]'
            )
        out.append("    end")
    for a, b, label, link_class in _edges(site):
        arrow = "<-->" if link_class == "in-region" else "<-.->"
        out.append(f'    {_ident(a)} {arrow}|"{label}"| {_ident(b)}')
    return "\n".join(out) + "\n"


def dot(site: Site) -> str:
    out = [f'graph "{site.name}" {{', "    node [shape=box];"]
    for region in site.regions:
        members = [n for n in site.nodes if n.region == region]
        if not members:
            continue
        out.append(f'    subgraph "cluster_{region}" {{')
        out.append(f'        label="{region}";')
        for node in members:
            out.append(f'        "{node.name}" [label="{node.name}\\n{node.address}:{node.port}"];')
        out.append("    }")
    for a, b, label, link_class in _edges(site):
        style = "solid" if link_class == "in-region" else "dashed"
        out.append(f'    "{a}" -- "{b}" [label="{label}", style={style}];')
    out.append("}")
    return "\n".join(out) + "\n"
