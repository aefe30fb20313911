"""The package's layout: imports among hpsearch's modules point one way down the pipeline, with no cycle."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hpsearch"

# The pipeline's stages in order (README, "How it works"). A module may import modules of its own stage
# or of an earlier one, never of a later one; imports only a type checker sees (``if TYPE_CHECKING:``)
# do not count, since they run nothing.
STAGES = ["errors", "signals", "shutdown", "space", "spec", "studyfile", "tasks", "optimizers", "train", "objective", "storage",
          "search", "report", "recipe", "cli"]


def module_names(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name under hpsearch (``search.runner``; a package by its own name) -> its file."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and parts[0] != "__main__":
            found[".".join(parts)] = path
    return found


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside ``if TYPE_CHECKING:`` blocks."""
    hidden = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            hidden |= {id(inner) for stmt in node.body for inner in ast.walk(stmt)}
    return hidden


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module -> the package's modules it imports at run time, anywhere in it (functions included)."""
    modules = module_names(package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        hidden = _type_checking_only(tree)
        found: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in hidden:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for target in targets:
                parts = target.split(".")
                # the longest prefix that is a module: "hpsearch.search.records.OUTCOME" -> "search.records"
                for end in range(len(parts), 1, -1):
                    if parts[0] == "hpsearch" and ".".join(parts[1:end]) in modules:
                        found.add(".".join(parts[1:end]))
                        break
        found.discard(name)
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles (each once, from its smallest module), found by depth-first search."""
    found: set[tuple[str, ...]] = set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == path[0]:
                found.add(tuple(path))
            elif nxt not in path and nxt > path[0]:
                visit(nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    return [list(c) + [c[0]] for c in sorted(found)]


def stage(module: str) -> int:
    return STAGES.index(module.split(".")[0])


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{source} -> {target}" for source, targets in sorted(graph.items()) for target in sorted(targets)
            if stage(target) > stage(source)]


def test_every_module_belongs_to_a_stage_of_the_pipeline() -> None:
    assert {name.split(".")[0] for name in module_names()} == set(STAGES)


def test_no_import_cycle_among_hpsearch_modules() -> None:
    graph = import_graph()
    assert "search.runner" in graph and "train" in graph  # the walk found the package
    assert cycles(graph) == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles(graph))


def test_imports_point_one_way_down_the_pipeline() -> None:
    assert upward_imports(import_graph()) == []


def readme_tree(readme: Path = PACKAGE.parent / "README.md") -> set[str]:
    """The module files the README's "How it works" tree names, as paths under hpsearch/."""
    section = readme.read_text().split("## How it works", 1)[1]
    block = section.split("```", 2)[1]
    found, folder = set(), ""
    for line in block.splitlines():
        entry = line.split()[0] if line.strip() else ""
        if not line.startswith(" "):
            folder = entry if entry.endswith("/") else ""
        if entry.endswith(".py"):
            found.add((folder if line.startswith(" ") else "") + entry)
    return found


def test_the_readme_tree_names_every_module_and_only_those() -> None:
    files = {str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
             if path.name not in ("__init__.py", "__main__.py")}
    assert readme_tree() == files


def test_the_checks_see_a_cycle_and_an_upward_import() -> None:
    """The rules above can fail: a made-up graph with both defects is caught."""
    graph = {"space": {"search.runner"}, "search.runner": {"search.jobs"}, "search.jobs": {"search.runner"}}
    assert cycles(graph) == [["search.jobs", "search.runner", "search.jobs"]]
    assert upward_imports(graph) == ["space -> search.runner"]


if __name__ == "__main__":
    graph = import_graph()
    for cycle in cycles(graph):
        print("cycle:", " -> ".join(cycle))
    for edge in upward_imports(graph):
        print("upward:", edge)
