"""The package structure stays what docs/architecture.md says: the import graph (read with
`ast`, function-level imports included) has no cycle, and every arrow is one the document's
"may import" tables allow."""

from __future__ import annotations

import ast
import os
import re

from conftest import ROOT

PACKAGE_DIR = os.path.join(ROOT, "loop")
DOC = os.path.join(ROOT, "docs", "architecture.md")
ROW = re.compile(r"^\|\s*`(loop[\w.]*)`\s*\|.*\|\s*([^|]*)\|\s*$")


def module_files() -> dict[str, str]:
    """{dotted module name: path} of every module in the package."""
    out = {}
    for base, dirs, files in os.walk(PACKAGE_DIR):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(base, name)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = path
    return out


def _resolve(target: str, modules: dict) -> str | None:
    """The LOOP module an import of `target` loads (the longest existing prefix)."""
    while target:
        if target in modules:
            return target
        target = target.rpartition(".")[0]
    return None


def imports_of(name: str, path: str, modules: dict) -> list[tuple[str, list[str], int]]:
    """[(imported LOOP module, names taken from it, line)] anywhere in the file."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                module = _resolve(alias.name, modules)
                if module:
                    found.append((module, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:  # `from loop.media import frames`
                    found.append((submodule, [], node.lineno))
                elif (module := _resolve(base, modules)) is not None:
                    found.append((module, [alias.name], node.lineno))
    return found


def graph() -> dict[str, list[tuple[str, list[str], int]]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def unit_of(module: str, units: dict) -> str | None:
    """The most specific row of the document's tables that `module` falls under."""
    best = None
    for unit in units:
        if (module == unit or module.startswith(unit + ".")) and \
                (best is None or len(unit) > len(best)):
            best = unit
    return best


def doc_rules() -> dict[str, set[str]]:
    """{package or module: what it may import} from the document's tables."""
    rules = {}
    with open(DOC, encoding="utf-8") as fh:
        for line in fh:
            match = ROW.match(line)
            if match and "may import" not in line:
                rules[match.group(1)] = set(re.findall(r"`(loop[\w.]*)`", match.group(2)))
    return rules


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


# ---- the checker itself ---------------------------------------------------------------------
def test_the_checker_sees_cycles_and_function_level_imports(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from loop.media import frames\n    import loop.config\n")
    modules = {"loop.media": "", "loop.media.frames": "", "loop.config": ""}
    assert [m for m, _, _ in imports_of("loop.x", str(source), modules)] == [
        "loop.media.frames", "loop.config"]


def test_every_package_and_module_named_by_the_document_exists():
    modules = module_files()
    rules = doc_rules()
    assert len(rules) >= 10, "the document's tables were not found"
    for unit, allowed in rules.items():
        assert unit in modules, f"docs/architecture.md names {unit}, which does not exist"
        for target in allowed:
            assert target in modules, f"{unit} may import {target}, which does not exist"
    packages = {m for m, p in modules.items() if p.endswith("__init__.py")} - {"loop"}
    top = {m for m in modules if m.count(".") == 1}
    assert (packages | top) - {"loop"} <= set(rules), "a package or top-level module is " \
        "missing from the document's table"


# ---- the structure ----------------------------------------------------------------------------
def test_no_import_cycle_between_modules():
    edges = {name: {m for m, _, _ in found if m != name} for name, found in graph().items()}
    # a submodule loading its own package's __init__ is not an arrow of the design
    edges = {name: {m for m in targets if not name.startswith(m + ".")}
             for name, targets in edges.items()}
    assert find_cycle(edges) is None, f"import cycle: {' -> '.join(find_cycle(edges))}"


def test_the_documented_package_arrows_have_no_cycle():
    rules = doc_rules()
    edges = {unit: {unit_of(t, rules) for t in allowed} for unit, allowed in rules.items()}
    assert find_cycle(edges) is None


def test_every_arrow_is_one_the_document_allows():
    rules = doc_rules()
    wrong = []
    for name, found in graph().items():
        unit = unit_of(name, rules)
        if unit is None:
            continue  # loop/__init__.py: the version only
        for target, _, line in found:
            inside = target == "loop" or unit_of(target, rules) == unit or \
                target.startswith(unit + ".")
            allowed = any(target == a or target.startswith(a + ".") for a in rules[unit])
            if not (inside or allowed):
                wrong.append(f"{name} imports {target} (line {line}); {unit} may import "
                             f"{', '.join(sorted(rules[unit])) or 'nothing else of LOOP'}")
    assert not wrong, "\n".join(wrong)


def test_strict_modules_import_nothing_else_of_loop():
    rules = doc_rules()
    strict = {unit: allowed for unit, allowed in rules.items() if unit.count(".") >= 2}
    assert "loop.display.base" in strict
    for name, found in graph().items():
        if name in strict:
            imported = {t for t, _, _ in found if t != "loop"}
            assert imported <= strict[name], f"{name} imports {sorted(imported)}"


def test_no_private_name_is_imported_across_modules():
    private = [f"{name} takes {n} from {target} (line {line})"
               for name, found in graph().items() for target, names, line in found
               for n in names if n.startswith("_") and not n.endswith("__")]
    assert not private, "\n".join(private)
