"""The shape of the code, checked from the source (docs/architecture.md, "Module map").

- no import circles among the modules of kiban, kiban_serving and kiban_dev, counting imports
  inside functions too (a lazy import still couples two modules);
- the runtime distribution (kiban, what the operator image installs) imports nothing of the
  developer distribution, and only the third-party packages its pyproject declares;
- the simulator and load generator (kiban_serving) import nothing of the developer tooling;
- the image's lock pins every declared runtime dependency at a version its specifier allows;
- the image build sees operator/ alone (Containerfile COPY sources, .containerignore).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
ROOTS = {
    "kiban": REPO / "operator" / "kiban",
    "kiban_serving": REPO / "serving" / "kiban_serving",
    "kiban_dev": REPO / "serving" / "kiban_dev",
}
# import name -> distribution name, where they differ
DISTRIBUTION_OF_IMPORT = {"yaml": "pyyaml", "prometheus_client": "prometheus-client"}


def modules() -> dict[str, Path]:
    found = {}
    for root in ROOTS.values():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imported_names(path: Path) -> set[str]:
    """Every absolute import in the file as a dotted name: `from a.b import c` gives a.b.c, which
    resolves to the submodule a.b.c when there is one and to a.b when c is a name in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (a name resolves to its longest module prefix)."""
    known = modules()

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    return {module: {target for name in imported_names(path) if (target := resolve(name)) not in (None, module)}
            for module, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    assert cycles(import_graph()) == []


def _in(module: str, top: str) -> bool:
    return module == top or module.startswith(top + ".")


def test_runtime_imports_no_developer_tooling():
    graph = import_graph()
    leaks = sorted((m, t) for m, targets in graph.items() if _in(m, "kiban") for t in targets if not _in(t, "kiban"))
    assert leaks == []


def test_simulator_and_load_generator_import_no_developer_tooling():
    graph = import_graph()
    leaks = sorted((m, t) for m, targets in graph.items() if _in(m, "kiban_serving")
                   for t in targets if _in(t, "kiban_dev"))
    assert leaks == []


# What each part may import of the project (docs/architecture.md's module maps say the same).
# A part is kiban.<first component>, or kiban_serving.<x> / kiban_dev.<x>.
ALLOWED = {
    "kiban.api": set(),
    "kiban.clock": set(),
    "kiban.metrics": set(),
    "kiban.capacity": {"kiban.api", "kiban.config", "kiban.sizing"},  # compare.py: sizing + capacity, priced
    "kiban.config": {"kiban.api"},
    "kiban.sizing": {"kiban.api", "kiban.config"},
    "kiban.builders": {"kiban.api", "kiban.config", "kiban.sizing"},
    "kiban.reconcile": {"kiban.api", "kiban.builders", "kiban.clock", "kiban.config", "kiban.metrics", "kiban.sizing"},
    "kiban.drift": {"kiban.autoscale", "kiban.clock"},
    "kiban.autoscale": {"kiban.api", "kiban.capacity", "kiban.clock", "kiban.config", "kiban.drift", "kiban.metrics",
                        "kiban.reconcile", "kiban.sizing"},
    "kiban.handlers": {"kiban.api", "kiban.reconcile"},
    "kiban.tasks": {"kiban.reconcile"},
    "kiban.gateway": {"kiban.api", "kiban.builders"},
    "kiban.operator_cli": {"kiban.autoscale", "kiban.config", "kiban.handlers", "kiban.metrics", "kiban.reconcile",
                           "kiban.tasks"},
    "kiban.cli": set(),  # subcommands are imported by name (importlib), not statically
    "kiban.__main__": {"kiban.cli"},
    "kiban_serving.sim": {"kiban.capacity"},
    "kiban_serving.loadgen": {"kiban_serving.sim"},
}


def part(module: str) -> str:
    pieces = module.split(".")
    return ".".join(pieces[:2]) if len(pieces) > 1 else pieces[0]


def test_each_part_imports_only_what_the_architecture_allows():
    graph = import_graph()
    unexpected = sorted({(part(m), part(t)) for m, targets in graph.items() for t in targets
                         if part(m) != part(t) and part(m) in ALLOWED and part(t) not in ALLOWED[part(m)]})
    assert unexpected == [], "update the code, or ALLOWED here and docs/architecture.md together"
    unknown = sorted({part(m) for m in graph if not m.startswith("kiban_dev") and part(m) not in ALLOWED}
                     - {"kiban", "kiban_serving"})  # the packages themselves
    assert unknown == [], "a new part: say what it may import in ALLOWED and docs/architecture.md"


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "operator" / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [Requirement(text) for text in project["dependencies"]]


# Developer tooling the runtime may use only when present: imported inside a function, in a
# `try` whose handler catches ImportError (and says what to install), never at module level.
OPTIONAL_RUNTIME_IMPORTS = {"matplotlib"}


def import_guarded_names(path: Path) -> set[str]:
    """Top-level package names imported inside `try: ... except ImportError` within a function."""
    guarded = set()
    for function in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if not isinstance(node, ast.Try):
                continue
            catches = {getattr(h.type, "id", None) for h in node.handlers}
            if not catches & {"ImportError", "ModuleNotFoundError"}:
                continue
            for statement in node.body:
                for inner in ast.walk(statement):
                    if isinstance(inner, ast.Import):
                        guarded.update(alias.name.split(".")[0] for alias in inner.names)
                    elif isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                        guarded.add(inner.module.split(".")[0])
    return guarded


def test_runtime_imports_only_declared_third_party_packages():
    declared = {canonicalize_name(r.name) for r in runtime_requirements()}
    used = set()
    for path in ROOTS["kiban"].rglob("*.py"):
        optional = import_guarded_names(path) & OPTIONAL_RUNTIME_IMPORTS
        for name in imported_names(path):
            top = name.split(".")[0]
            if top != "kiban" and top not in sys.stdlib_module_names and top not in optional:
                used.add(canonicalize_name(DISTRIBUTION_OF_IMPORT.get(top, top)))
    assert used - declared == set(), "imported by the runtime but not in operator/pyproject.toml"


def test_optional_imports_are_guarded_not_module_level():
    for path in ROOTS["kiban"].rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import)
                     for alias in node.names}
        top_level |= {node.module.split(".")[0] for node in tree.body
                      if isinstance(node, ast.ImportFrom) and node.module}
        assert not top_level & OPTIONAL_RUNTIME_IMPORTS, f"{path}: imports developer tooling at module level"


def locked_versions() -> dict[str, str]:
    text = (REPO / "operator" / "requirements.lock").read_text(encoding="utf-8")
    return {canonicalize_name(name): version
            for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", text, re.MULTILINE)}


def test_lock_pins_every_runtime_dependency_within_its_specifier():
    locked = locked_versions()
    for requirement in runtime_requirements():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not pinned in operator/requirements.lock (make lock)"
        assert requirement.specifier.contains(locked[name], prereleases=True), (name, locked[name])


def test_lock_carries_a_hash_for_every_pin():
    text = (REPO / "operator" / "requirements.lock").read_text(encoding="utf-8")
    pins = re.split(r"^(?=[A-Za-z0-9_.-]+==)", text, flags=re.MULTILINE)
    assert all("--hash=sha256:" in pin for pin in pins if "==" in pin)


def test_developer_tooling_is_not_in_the_runtime_distribution():
    project = tomllib.loads((REPO / "operator" / "pyproject.toml").read_text(encoding="utf-8"))
    find = project["tool"]["setuptools"]["packages"]["find"]
    assert find["include"] == ["kiban", "kiban.*"]
    runtime_dependencies = {canonicalize_name(r.name) for r in runtime_requirements()}
    assert runtime_dependencies.isdisjoint({"matplotlib", "scipy", "tqdm", "grafana-foundation-sdk", "pytest"})


def test_image_build_sees_only_the_runtime_distribution():
    """The Containerfile copies from operator/ alone, and .containerignore hides the rest of the
    repository from the build (tests/integration/test_operator_image.py checks the built image)."""
    copies = [line.split()[1:] for line in (REPO / "Containerfile").read_text(encoding="utf-8").splitlines()
              if line.startswith("COPY ")]
    sources = [arg for args in copies if not any(a.startswith("--from=") for a in args)
               for arg in [a for a in args if not a.startswith("--")][:-1]]
    assert sources and all(source.startswith("operator/") for source in sources), sources
    ignore = [line.strip() for line in (REPO / ".containerignore").read_text(encoding="utf-8").splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[:2] == ["*", "!operator/"]
