"""The dependency graph of ``src/cmrseg``, read from the source: no import cycle (imports
inside functions count), and no library module imports the command line."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t in modules and t != name:
                    graph[name].add(t)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle():
    graph = _graph()
    assert len(graph) > 30
    # a package importing its own submodules (its __init__ re-exporting them) is not a cycle
    pruned = {m: {n for n in deps if not (m.startswith(n + ".") and n in graph)} for m, deps in graph.items()}
    assert _cycle(pruned) is None, " -> ".join(_cycle(pruned))


def test_only_the_entry_points_import_the_command_line():
    importers = sorted(m for m, deps in _graph().items() if "cmrseg.cli" in deps)
    assert importers == ["cmrseg.__main__"], importers


def test_data_models_inference_evaluation_never_import_training():
    for m, deps in _graph().items():
        if m.split(".")[1:2] and m.split(".")[1] in ("data", "models", "inference", "evaluation"):
            assert not any(d.startswith("cmrseg.training") for d in deps), (m, deps)


def _functions():
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, node


def test_functions_fit_on_a_screen():
    """Every function in src/ is at most 50 lines; the command line's flat argument table aside."""
    long = sorted((n.end_lineno - n.lineno + 1, f"{p.relative_to(SRC)}:{n.name}") for p, n in _functions()
                  if n.end_lineno - n.lineno + 1 > 50 and not (p.name == "cli.py" and n.name == "build_parser"))
    assert not long, long


def test_library_modules_import_cmrseg_at_the_top():
    """Imports of cmrseg modules inside functions hide the dependency graph: only cli.py has
    them (each command imports what it runs, so ``cmrseg --help`` starts fast)."""
    inner = []
    for path, fn in _functions():
        if path.name == "cli.py":
            continue
        for n in ast.walk(fn):
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("cmrseg"):
                inner.append(f"{path.relative_to(SRC)}:{fn.name} imports {n.module}")
    assert not inner, inner
