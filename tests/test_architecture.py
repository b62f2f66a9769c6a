"""The layout ARCHITECTURE.md promises, checked on the source: a Ray-free library, no
import cycles, thin jobs, and docs that name every room."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("colbert_core", "jobs")
#: The jobs/ promise: argument parsing, Ray plumbing and console output, in short functions.
MAX_JOBS_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    mods = {}
    for root in PACKAGES:
        for path in (REPO / root).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> modules it imports at import time (top-level statements only)."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                subs = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in mods]
                # `from pkg import submodule` needs the submodule, not the package __init__.
                names = subs if len(subs) == len(node.names) else [source, *subs]
            else:
                continue
            graph[module] |= {n for n in names if n in mods and n != module}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first search meets.

    >>> find_cycles({"a": {"b"}, "b": {"a"}, "c": set()})
    [['a', 'b', 'a']]
    """
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycles() -> None:
    assert find_cycles(_import_graph(_modules())) == []


def test_the_library_never_imports_ray() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for path in (REPO / "colbert_core").rglob("*.py")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if re.match(r"\s*(import ray\b|from ray\b)", line)
    ]
    assert offenders == []


def test_the_library_logs_and_never_prints_or_configures_logging() -> None:
    offenders = []
    for path in (REPO / "colbert_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                if name == "print" or name.startswith("logging.basicConfig"):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {name}")
    assert offenders == []


def test_jobs_functions_are_short() -> None:
    long = []
    for path in (REPO / "jobs").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > MAX_JOBS_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines})")
    assert long == []


@pytest.mark.parametrize("doc", ["README.md", "ARCHITECTURE.md"])
def test_docs_name_every_room(doc: str) -> None:
    text = (REPO / doc).read_text(encoding="utf-8")
    rooms = [f"{p.parent.name}/" for root in PACKAGES for p in (REPO / root).glob("*/__init__.py")]
    missing = [room for room in rooms if room not in text]
    assert missing == [], f"{doc} does not mention {missing}"


def test_every_command_module_has_the_command_shape() -> None:
    from jobs.commands import COMMANDS

    for name, module in COMMANDS.items():
        for attr in ("HELP", "Config", "add_arguments", "run", "report"):
            assert hasattr(module, attr), f"jobs/commands/{name}.py lacks {attr}"
        assert module.Config.__dataclass_params__.frozen, name
