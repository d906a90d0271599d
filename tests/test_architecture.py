"""The layers point one way and no module imports itself round a cycle.

Read from the source (ast), so an import inside a function counts as much as one at the
top; only imports under `if TYPE_CHECKING:` are left out (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lotdeploy"

#: top to bottom: cli -> apply/verify/lab/broker client -> plan/render -> compile/pki/
#: credentials -> spec/workspace/state/rotation -> model/lot/secret/errors/protocol.
#: A module may import its own layer or any lower one, never a higher one.
LAYERS: list[tuple[int, tuple[str, ...]]] = [
    (5, ("lotdeploy.cli",)),
    (
        4,
        (
            "lotdeploy.lab",
            "lotdeploy.broker",
            "lotdeploy.apply",
            "lotdeploy.node",
            "lotdeploy.doctor",
            "lotdeploy.verify",
            "lotdeploy.transport",
            "lotdeploy.rollout",
            "lotdeploy.ansible",
            "lotdeploy.adopt",
            "lotdeploy.fleet",
            "lotdeploy.watch",
        ),
    ),
    (3, ("lotdeploy.plan", "lotdeploy.render")),
    (2, ("lotdeploy.compiler", "lotdeploy.pki", "lotdeploy.credentials")),
    (
        1,
        (
            "lotdeploy.spec",
            "lotdeploy.workspace",
            "lotdeploy.state",
            "lotdeploy.rotation",
            "lotdeploy.graph",
            "lotdeploy.selection",
            "lotdeploy.sitefacts",
            "lotdeploy.routesecret",
        ),
    ),
    (
        0,
        (
            "lotdeploy.model",
            "lotdeploy.lot",
            "lotdeploy.secret",
            "lotdeploy.errors",
            "lotdeploy.fsutil",
            "lotdeploy.protocol",
            "lotdeploy.exitstatus",
            "lotdeploy.values",
            "lotdeploy.exitstatus",
            "lotdeploy.clientids",
            "lotdeploy.guard",
            "lotdeploy.terminal",
            "lotdeploy.ownership",
            "lotdeploy.routecode",
            "lotdeploy.profiles",
        ),
    ),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    if module.endswith("__main__"):
        return 6  # entry points may start the CLI
    best: tuple[int, int] | None = None  # (prefix length, layer): the longest prefix wins
    for layer, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > best[0]
            ):
                best = (len(prefix), layer)
    if module == "lotdeploy":
        return 0
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[1]


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in modules else base)
            for target in targets:
                if target.startswith("lotdeploy") and target != module and target in modules:
                    graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    def top(m: str) -> str:
        return ".".join(m.split(".")[:2])

    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        if module.endswith("__main__"):
            continue  # entry points start the CLI; they are outside the layers
        out.setdefault(top(module), set()).update(top(t) for t in targets if top(t) != top(module))
    return out


def test_no_import_cycle_between_modules() -> None:
    assert _cycles(imports()) == []


def test_no_import_cycle_between_packages() -> None:
    assert _cycles(_packages(imports())) == []


def test_layers_point_one_way() -> None:
    wrong = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in sorted(imports().items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert wrong == []


def test_click_only_in_the_cli_package() -> None:
    offenders = [
        module_name(p)
        for p in PACKAGE.rglob("*.py")
        if "cli" not in module_name(p).split(".")[1:2]
        and any(
            isinstance(n, ast.Import | ast.ImportFrom)
            and any(
                (getattr(n, "module", None) or a.name).split(".")[0] == "click" for a in n.names
            )
            for n in ast.walk(ast.parse(p.read_text()))
        )
    ]
    assert offenders == []


def test_the_checker_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
