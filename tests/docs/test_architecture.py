"""The import rules of docs/architecture.md ("Import rules"), checked over every module.

The document is the source of truth: rule 1's forbidden modules, rule 2's layer order, the set
of pure folders and the table of what each folder may import are read from it, so changing the
document changes the check. Rules 3-6 are coded here as the document words them.

A failure lists every violation as ``file:line: `import` (imports target) breaks rule N: why``;
a cycle (rule 6) lists its modules and the imports that close it.
"""

from __future__ import annotations

import ast
import re
from collections import deque
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
TOP_FOLDERS = ("peerstore", "sim", "tests")
MAX_MODULES = 2000  # a bound on the walk; the tree has a few hundred

# Every "folder" of the table. Shell subfolders and cli/bench/testing are matched by prefix.
PURE_LAYER_GROUPS = ("errors", "ec", "model", "watch", "wire", "gossip", "core")
SHELL_SUBFOLDERS = ("store", "client", "daemon")
PEERSTORE_GROUPS = (
    "root", "main", *PURE_LAYER_GROUPS, "helpers", *SHELL_SUBFOLDERS, "cli", "bench", "testing",
)
ALL_GROUPS = (*PEERSTORE_GROUPS, "sim", "tests")
# How messages name each group.
LABELS = {
    "root": "peerstore/__init__.py", "main": "peerstore/__main__.py",
    "errors": "peerstore/errors.py",
    **{g: f"peerstore/{g}/" for g in ("ec", "model", "watch", "wire", "gossip", "core")},
    "helpers": "the shell helpers (peerstore/shell/*.py)",
    **{g: f"peerstore/shell/{g}/" for g in SHELL_SUBFOLDERS},
    **{g: f"peerstore/{g}/" for g in ("cli", "bench", "testing")},
    "sim": "sim/", "tests": "tests/", "unmapped": "a module in no row of the table",
}

# The table's first column, cell text -> group.
FOLDER_CELLS = {
    "`errors.py`": "errors",
    **{f"`{g}/`": g for g in ("ec", "model", "watch", "wire", "gossip", "core")},
    "`shell/` helpers": "helpers",
    **{f"`shell/{g}/`": g for g in SHELL_SUBFOLDERS},
    **{f"`{g}/`": g for g in ("cli", "bench", "testing", "sim", "tests")},
    "`__main__.py`": "main",
    "`__init__.py`": "root",
}
# The table's second column, phrase -> groups (phrases are separated by ", ").
ALLOWED_PHRASES = {
    "nothing of peerstore": (),
    **{g: (g,) for g in PURE_LAYER_GROUPS},
    "pure code": PURE_LAYER_GROUPS,
    "all pure code": PURE_LAYER_GROUPS,
    "shell helpers": ("helpers",),
    **{f"`shell/{g}/`": (g,) for g in SHELL_SUBFOLDERS},
    "`cli/`": ("cli",),
    "`sim`": ("sim",),
    "anything": ALL_GROUPS,
}
ALL_BUT = re.compile(r"all of `peerstore` but ((?:`\w+`)(?: and `\w+`)*)$")
# The document's names for the folders it lists in rule 1 and in the pure set.
DOTTED_GROUPS = {
    "peerstore.shell": ("helpers", *SHELL_SUBFOLDERS),
    "peerstore.cli": ("cli",), "peerstore.bench": ("bench",),
    "peerstore.testing": ("testing",), "sim": ("sim",), "tests": ("tests",),
}


# --- what the document says ------------------------------------------------------------------

@dataclass(frozen=True)
class DocRules:
    forbidden_io: frozenset[str]  # rule 1: top-level modules a pure module never imports
    forbidden_groups: frozenset[str]  # rule 1: folders a pure module never imports
    layers: tuple[str, ...]  # rule 2
    pure: frozenset[str]
    allowed: dict[str, frozenset[str]]  # the table: group -> groups it may import


def _section(text: str, start: str, end: str) -> str:
    i = text.find(start)
    j = text.find(end, i + len(start))
    assert i >= 0 and j >= 0, (
        f"docs/architecture.md no longer has {start!r} ... {end!r}: update"
        f" tests/docs/test_architecture.py to read the rules where they are now"
    )
    return text[i:j]


def _ticked(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def _allowed_cell(cell: str) -> frozenset[str]:
    groups: set[str] = set()
    for phrase in cell.split(", "):
        if (m := ALL_BUT.match(phrase)):
            excluded = {name.strip("`") for name in m.group(1).split(" and ")}
            unknown = excluded - set(PEERSTORE_GROUPS)
            assert not unknown, f"table phrase {phrase!r}: unknown folder(s) {sorted(unknown)}"
            groups |= set(PEERSTORE_GROUPS) - excluded
        else:
            assert phrase in ALLOWED_PHRASES, (
                f"table cell {cell!r}: phrase {phrase!r} is not understood by"
                f" tests/docs/test_architecture.py; use one of {sorted(ALLOWED_PHRASES)}"
                " or `all of `peerstore` but `x``, or teach the test the new phrase"
            )
            groups |= set(ALLOWED_PHRASES[phrase])
    return frozenset(groups)


@cache
def doc_rules() -> DocRules:
    """Rule 1's lists, rule 2's order, the pure set and the table, read from the document."""
    text = DOC.read_text(encoding="utf-8")
    rules = _section(text, "### Import rules", "\n## ")

    pure_text = _section(rules, "The *pure* modules are", "\n\n")
    pure = set()
    for path in _ticked(pure_text):
        name = path.removeprefix("peerstore/").removesuffix(".py")
        assert name in PURE_LAYER_GROUPS, f"pure set names {path!r}, which is no pure folder"
        pure.add(name)

    rule1 = _section(rules, "1. **Pure code does no I/O.**", "\n2. **")
    m = re.search(r"never imports\s+(.*?),\s+nor anything under\s+(.*?)\.\s", rule1, re.S)
    assert m, "rule 1 no longer reads 'never imports ..., nor anything under ....'"
    forbidden_io = frozenset(_ticked(m.group(1)))
    forbidden_groups: set[str] = set()
    for dotted in _ticked(m.group(2)):
        assert dotted in DOTTED_GROUPS, f"rule 1 names {dotted!r}, unknown to the test"
        forbidden_groups |= set(DOTTED_GROUPS[dotted])

    rule2 = _section(rules, "2. **Pure layers stack.**", "\n3. **")
    m = re.search(r"In the order ((?:`\w+`\s*→\s*)+`\w+`)", rule2)
    assert m, "rule 2 no longer reads 'In the order `a` → `b` → ...'"
    layers = tuple(_ticked(m.group(1)))
    assert set(layers) == pure, f"rule 2's layers {layers} are not the pure set {sorted(pure)}"

    table = _section(rules, "| folder | may import |", "\n\n")
    allowed: dict[str, frozenset[str]] = {}
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        assert len(cells) == 2, f"table row {row!r} does not have two cells"
        for folder in cells[0].split(", "):
            assert folder in FOLDER_CELLS, (
                f"table row {row!r}: folder {folder!r} is unknown to"
                f" tests/docs/test_architecture.py; add it to FOLDER_CELLS and GROUPS there"
            )
            group = FOLDER_CELLS[folder]
            assert group not in allowed, f"table has two rows for {folder}"
            allowed[group] = _allowed_cell(cells[1])
    missing = set(ALL_GROUPS) - set(allowed)
    assert not missing, f"the table has no row for {sorted(missing)}"
    return DocRules(forbidden_io, frozenset(forbidden_groups), layers, frozenset(pure), allowed)


# --- what the code does ----------------------------------------------------------------------

@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. "peerstore.model.names"
    path: str  # relative to the repository, e.g. "peerstore/model/names.py"
    is_package: bool
    source: str


@dataclass(frozen=True)
class Import:
    source: Module
    line: int
    statement: str  # e.g. "from peerstore.model import names"
    target: str  # the module it counts as an import of (see "Terms" in the document)
    type_only: bool  # under `if TYPE_CHECKING:`


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    statement: str
    target: str
    rule: str
    why: str

    def __str__(self) -> str:
        return (f"{self.path}:{self.line}: `{self.statement}` (imports {self.target})"
                f" breaks {self.rule}: {self.why}")


def load_tree(root: Path = ROOT) -> dict[str, Module]:
    """Every module under peerstore/, sim/ and tests/, by dotted name."""
    modules: dict[str, Module] = {}
    for top in TOP_FOLDERS:
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root)
            if "__pycache__" in rel.parts:
                continue
            parts = list(rel.with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            name = ".".join(parts)
            modules[name] = Module(name, rel.as_posix(), is_package,
                                   path.read_text(encoding="utf-8"))
            assert len(modules) <= MAX_MODULES, f"over {MAX_MODULES} modules: raise MAX_MODULES"
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _statements(tree: ast.AST):
    """(import node, type_only) for every import at any depth."""
    todo: list[tuple[ast.AST, bool]] = [(tree, False)]
    while todo:
        node, type_only = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, type_only
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            todo += [(n, True) for n in node.body] + [(n, type_only) for n in node.orelse]
        else:
            todo += [(n, type_only) for n in ast.iter_child_nodes(node)]


def _resolve_relative(module: Module, level: int, name: str | None) -> str:
    base = module.name.split(".")
    if not module.is_package:
        base.pop()
    if level - 1 > len(base) - 1:
        raise AssertionError(f"{module.path}: relative import beyond the top-level package")
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(module: Module, known: set[str] | dict[str, Module]) -> list[Import]:
    """The imports of one module, each resolved to the module it counts as an import of."""
    try:
        tree = ast.parse(module.source, filename=module.path)
    except SyntaxError as e:
        raise AssertionError(f"{module.path}:{e.lineno}: cannot parse: {e.msg}") from None
    found = []
    for node, type_only in _statements(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, node.lineno, f"import {alias.name}", alias.name,
                                    type_only))
            continue
        base = (_resolve_relative(module, node.level, node.module) if node.level
                else node.module or "")
        written = "." * node.level + (node.module or "")
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            target = candidate if alias.name != "*" and candidate in known else base
            found.append(Import(module, node.lineno, f"from {written} import {alias.name}",
                                target, type_only))
    return sorted(found, key=lambda i: (i.line, i.statement))


def group_of(name: str, packages: set[str]) -> str | None:
    """The table row a module belongs to, "unmapped" if none, None if not ours."""
    parts = name.split(".")
    top = parts[0]
    if top in ("sim", "tests"):
        return top
    if top != "peerstore":
        return None
    if len(parts) == 1:
        return "root"
    second = parts[1]
    if second == "__main__" and len(parts) == 2:
        return "main"
    if second in PURE_LAYER_GROUPS and (second != "errors" or len(parts) == 2):
        return second
    if second in ("cli", "bench", "testing"):
        return second
    if second == "shell":
        if len(parts) == 2:
            return "helpers"
        if parts[2] in SHELL_SUBFOLDERS:
            return parts[2]
        if len(parts) == 3 and name not in packages:
            return "helpers"
    return "unmapped"


def _top(name: str) -> str:
    return name.split(".")[0]


def check_rules(modules: dict[str, Module]) -> list[Violation]:
    """Violations of rules 1-5 and of the table (imports under TYPE_CHECKING are exempt)."""
    doc = doc_rules()
    packages = {m.name for m in modules.values() if m.is_package}
    pure = doc.pure
    out: list[Violation] = []
    for module in modules.values():
        src = group_of(module.name, packages)
        if src in (None, "unmapped"):
            continue  # reported by test_every_module_is_in_a_row_of_the_table
        for imp in imports_of(module, modules):
            if imp.type_only:
                continue
            dst = group_of(imp.target, packages)

            def bad(rule: str, why: str, imp: Import = imp) -> None:
                out.append(Violation(module.path, imp.line, imp.statement, imp.target, rule, why))

            if src in pure:
                if _top(imp.target) in doc.forbidden_io:
                    bad("rule 1", f"pure code does no I/O: a pure module never imports"
                        f" {_top(imp.target)} (pass what it needs in, or annotate under"
                        " `if TYPE_CHECKING:`)")
                elif dst in doc.forbidden_groups:
                    bad("rule 1", f"pure code never imports {LABELS[dst]}")
                if dst in pure:
                    if doc.layers.index(dst) > doc.layers.index(src):
                        bad("rule 2", f"{LABELS[src]} comes before {LABELS[dst]} in the"
                            f" layer order {' -> '.join(doc.layers)}")
                    elif src == "watch" and dst not in ("errors", "model", "watch"):
                        bad("rule 2", "watch imports only errors and model")
            if src in ("daemon", "client") and dst in ("daemon", "client") and src != dst:
                bad("rule 3", f"peerstore.shell.{src} never imports peerstore.shell.{dst}")
            if src == "store" and dst in ("daemon", "client"):
                bad("rule 3", f"peerstore.shell.store never imports peerstore.shell.{dst}")
            if src == "helpers" and dst is not None and dst not in (*pure, "helpers", "root"):
                bad("rule 3", "the shell helpers import pure code and each other only")
            if src == "sim" and dst is not None and dst not in (*pure, "sim", "root"):
                bad("rule 4", "the simulator imports the pure modules and itself only")
            if dst == "tests" and src != "tests":
                bad("rule 5", "only modules under tests/ import tests")
            if dst in ("cli", "bench") and src not in (dst, "main", "tests"):
                bad("rule 5", f"nothing imports peerstore.{dst} but its own modules,"
                    " peerstore/__main__.py and tests")
            if dst is not None and dst not in (doc.allowed[src] | {src, "root"}):
                may = [LABELS[g] for g in ALL_GROUPS if g in doc.allowed[src] - {src}]
                bad("the table", f"{LABELS[src]} may import {', '.join(may) or 'nothing'}"
                    f" (and itself), not {LABELS[dst]}")
    return out


def import_graph(modules: dict[str, Module]) -> dict[str, list[Import]]:
    """Module -> its imports of modules in the tree, TYPE_CHECKING ones included (rule 6)."""
    return {name: [i for i in imports_of(m, modules) if i.target in modules]
            for name, m in modules.items()}


def strongly_connected(graph: dict[str, list[Import]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iteratively), each sorted; all sizes."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted({i.target for i in graph[start]})))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted({i.target for i in graph[succ]}))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def _shortest_cycle(graph: dict[str, list[Import]], members: set[str]) -> list[Import]:
    """One shortest cycle through the first member, staying inside the component."""
    start = min(members)
    came: dict[str, Import] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for imp in graph[node]:
            if imp.target not in members:
                continue
            if imp.target == start:
                path = [imp]
                while path[0].source.name != start:
                    path.insert(0, came[path[0].source.name])
                return path
            if imp.target not in came:
                came[imp.target] = imp
                queue.append(imp.target)
    raise AssertionError(f"no cycle through {start}")  # a component always has one


def _edge(imp: Import) -> str:
    kind = " (under TYPE_CHECKING)" if imp.type_only else ""
    return (f"{imp.source.name} -> {imp.target}: {imp.source.path}:{imp.line}"
            f" `{imp.statement}`{kind}")


def find_cycles(modules: dict[str, Module]) -> list[str]:
    """One message per import cycle (a component of more than one module, or a self-import)."""
    graph = import_graph(modules)
    messages = []
    for component in strongly_connected(graph):
        members = set(component)
        inside = [i for m in component for i in graph[m] if i.target in members]
        if len(component) == 1 and not inside:
            continue
        lines = [f"rule 6 (no import cycles): a cycle among {len(component)} module(s):"
                 f" {', '.join(component)}",
                 "  shortest cycle:",
                 *(f"    {_edge(i)}" for i in _shortest_cycle(graph, members)),
                 "  every import inside it (break the cycle: move the shared part down, or give"
                 " the callee a Protocol of its caller):",
                 *(f"    {_edge(i)}" for i in inside)]
        messages.append("\n".join(lines))
    return messages


# --- the tree --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tree() -> dict[str, Module]:
    return load_tree()


def _report(violations: list[Violation], rule: str) -> str:
    hits = [str(v) for v in violations if v.rule == rule]
    return f"{len(hits)} import(s) break {rule} of docs/architecture.md:\n" + "\n".join(hits)


def test_the_document_states_rules_the_test_can_read():
    doc = doc_rules()
    assert {"trio", "socket", "os", "time", "zeroconf", "watchdog",
            "prometheus_client"} <= doc.forbidden_io
    assert doc.layers[0] == "errors" and doc.layers[-1] == "core"
    assert doc.pure == set(PURE_LAYER_GROUPS)
    assert doc.allowed["errors"] == frozenset()
    assert doc.allowed["tests"] == set(ALL_GROUPS)


def test_every_module_is_in_a_row_of_the_table(tree):
    packages = {m.name for m in tree.values() if m.is_package}
    unmapped = [m.path for m in tree.values() if group_of(m.name, packages) == "unmapped"]
    if unmapped:
        pytest.fail("modules in no folder of docs/architecture.md's map and import table (add"
                    " the folder to the map, the table and FOLDER_CELLS/group_of in"
                    " tests/docs/test_architecture.py, or move them):\n" + "\n".join(unmapped),
                    pytrace=False)


@pytest.mark.parametrize("rule", ["rule 1", "rule 2", "rule 3", "rule 4", "rule 5", "the table"])
def test_import_rule(tree, rule):
    violations = [v for v in check_rules(tree) if v.rule == rule]
    if violations:
        pytest.fail(_report(violations, rule), pytrace=False)


def test_rule_6_no_import_cycles(tree):
    cycles = find_cycles(tree)
    if cycles:
        pytest.fail(f"{len(cycles)} import cycle(s):\n" + "\n".join(cycles), pytrace=False)


# --- the checker itself, on small made-up trees ----------------------------------------------

def _fake(**sources: str) -> dict[str, Module]:
    """Modules from {"peerstore__model__names": source}; "__" stands for "." in the name."""
    modules = {}
    for key, source in sources.items():
        name = key.replace("__", ".")
        is_package = name in {"peerstore", "sim", "tests"} or name.endswith("_pkg")
        name = name.removesuffix("_pkg")
        path = name.replace(".", "/") + ("/__init__.py" if is_package else ".py")
        modules[name] = Module(name, path, is_package, source)
    return modules


def test_checker_flags_io_in_pure_code_at_any_depth_but_not_under_type_checking():
    modules = _fake(
        peerstore__core__node=(
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    import random\n    import trio\n"
            "else:\n    import socket\n"
            "def f():\n    import os.path\n    from time import monotonic\n"),
    )
    found = [(v.line, v.target, v.rule) for v in check_rules(modules)]
    assert found == [(6, "socket", "rule 1"), (8, "os.path", "rule 1"), (9, "time", "rule 1")]
    message = str(check_rules(modules)[0])
    assert message.startswith("peerstore/core/node.py:6: `import socket` (imports socket)"
                              " breaks rule 1:")


def test_checker_flags_layer_order_and_resolves_relative_imports():
    modules = _fake(
        peerstore__model_pkg="",
        peerstore__model__names="from ..wire import frames\nfrom . import policy\n",
        peerstore__model__policy="",
        peerstore__wire_pkg="",
        peerstore__wire__frames="",
        peerstore__watch__detect="from peerstore.ec import layout\n",
        peerstore__ec__layout="",
    )
    found = {(v.path, v.target, v.rule) for v in check_rules(modules)}
    assert ("peerstore/model/names.py", "peerstore.wire.frames", "rule 2") in found
    assert ("peerstore/watch/detect.py", "peerstore.ec.layout", "rule 2") in found
    assert not any(v.target == "peerstore.model.policy" for v in check_rules(modules))


def test_checker_flags_shells_sim_and_tests_imports():
    modules = _fake(
        peerstore__shell__store__meta="import peerstore.shell.daemon.node\n",
        peerstore__shell__daemon__node="from peerstore.shell.store import meta\n",
        peerstore__shell__config="from peerstore.shell.client import api\n",
        peerstore__shell__client__api="from peerstore.cli import commands\n",
        peerstore__cli__commands="from tests.support import netns\n",
        sim__node="from peerstore.shell import durable\n",
        peerstore__shell__durable="",
        tests__support__netns="from peerstore.cli import commands\n",
    )
    found = {(v.path, v.rule) for v in check_rules(modules)}
    assert found == {
        ("peerstore/shell/store/meta.py", "rule 3"),
        ("peerstore/shell/store/meta.py", "the table"),
        ("peerstore/shell/config.py", "rule 3"),
        ("peerstore/shell/config.py", "the table"),
        ("peerstore/shell/client/api.py", "rule 5"),
        ("peerstore/shell/client/api.py", "the table"),
        ("peerstore/cli/commands.py", "rule 5"),
        ("peerstore/cli/commands.py", "the table"),
        ("sim/node.py", "rule 4"),
        ("sim/node.py", "the table"),
    }


def test_checker_reports_a_type_checking_cycle_with_its_modules_and_lines():
    modules = _fake(
        peerstore__shell__daemon__node="from peerstore.shell.daemon.clients import Clients\n",
        peerstore__shell__daemon__clients=(
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from peerstore.shell.daemon.node import Daemon\n"),
        peerstore__shell__daemon__metrics="from peerstore.shell.daemon import clients\n",
    )
    assert check_rules(modules) == []
    cycles = find_cycles(modules)
    assert len(cycles) == 1
    assert "peerstore.shell.daemon.clients, peerstore.shell.daemon.node" in cycles[0]
    assert ("peerstore/shell/daemon/clients.py:3"
            " `from peerstore.shell.daemon.node import Daemon` (under TYPE_CHECKING)") in cycles[0]
    assert "metrics" not in cycles[0]  # it imports into the cycle but is not part of it
