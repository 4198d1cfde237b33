"""docs/architecture.md's layers, checked over every import of the package: at the top of a file or inside
a function, absolute or relative. A module imports only from its own layer or those below it; the uses of
layer 8 import none of each other's modules; no import circle, hidden in a function or not."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "bestrq"
DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def layers() -> dict[str, int]:
    """Module or package path (``models``, ``files``, ``data``) -> its layer, from the doc's table."""
    found = {}
    table = DOC.read_text().split("## Layers", 1)[1].split("\n## ", 1)[0]
    for row in re.finditer(r"^\| (\d+)\. [^|]+\| ([^|]+)\|", table, re.MULTILINE):
        for name in re.findall(r"`([\w/.]+)`", row.group(2)):
            name = name.removesuffix(".py").removesuffix("/").replace("/", ".")
            assert name not in found, f"{name} is in two rows of the layer table"
            found[name] = int(row.group(1))
    return found


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        names[".".join(p for p in parts if p != "__init__")] = path
    return names


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that a module imports, anywhere in it (``""`` is the package itself)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [p for p in package if p]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == "bestrq" or node.module.startswith("bestrq.")):
                module = node.module.removeprefix("bestrq").lstrip(".")
            else:
                continue
            # `from . import x`: the submodule x if there is one, else a name of the package
            targets = [f"{module}.{a.name}".lstrip(".") if f"{module}.{a.name}".lstrip(".") in known else module
                       for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name.removeprefix("bestrq").lstrip(".") for a in node.names
                       if a.name == "bestrq" or a.name.startswith("bestrq.")]
        found.update(t for t in targets if t != name)
    return found


def layer_of(name: str, table: dict[str, int]) -> int:
    parts = name.split(".") if name else [""]
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in table:
            return table[".".join(parts[:i])]
    raise AssertionError(f"bestrq.{name} is in no layer of docs/architecture.md")


def test_every_import_keeps_to_the_layers_of_the_architecture_doc():
    table, names = layers(), module_names()
    table[""] = table["__init__"]
    assert {"files", "features", "models", "config", "runtime", "inference", "train", "study", "cli"} <= table.keys()
    up, across = [], []
    uses = ("train", "probes", "export")  # layer 8: none imports another's modules
    for name, path in sorted(names.items()):
        mine = layer_of(name, table)
        for target in sorted(imports(name, path, set(names))):
            if layer_of(target, table) > mine:
                up.append(f"bestrq.{name} (layer {mine}) imports bestrq.{target} (layer {layer_of(target, table)})")
            top, other = name.split(".")[0], target.split(".")[0]
            if top in uses and other in uses and top != other:
                across.append(f"bestrq.{name} imports bestrq.{target}")
    assert not up, "imports that run up a layer:\n" + "\n".join(up)
    assert not across, "uses that import each other:\n" + "\n".join(across)


def test_no_import_circles():
    names = module_names()
    graph = {name: imports(name, path, set(names)) & set(names) for name, path in names.items()}
    circles = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_checker_sees_function_level_relative_and_package_imports(tmp_path):
    """The checker itself: a function-level relative import, `from . import x` of a submodule and of a name."""
    (tmp_path / "pkg").mkdir()
    source = tmp_path / "pkg" / "a.py"
    source.write_text("def f():\n    from ..train.loop import pretrain\n    from . import b, NAME\n"
                      "    import bestrq.cli\n")
    found = imports("study.a", source, {"study.b", "train.loop", "cli", "study"})
    assert found == {"train.loop", "study.b", "study", "cli"}


def test_no_module_imports_another_modules_private_name():
    private = []
    for name, path in sorted(module_names().items()):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("bestrq")):
                private += [f"bestrq.{name} imports {a.name} from {'.' * node.level}{node.module or ''}"
                            for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not private, "\n".join(private)
