"""The package layout: the live path stays flat and cheap, the offline half's rooms import only downward
(evaluation -> train -> data -> live path), no import cycles, no private name imported across modules."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "routoo_fast"
# room of each module: its subpackage, or "live" for the flat top level (cli is the entry point over all rooms)
LEVEL = {"live": 0, "serve": 1, "data": 1, "train": 2, "evaluation": 3}
# cli is the entry point over all rooms; the Router's optional micro-batching imports serve.batcher when enabled;
# the int8 ONNX export (once per weights, inside a function) reads its calibration prompts from the bundled data
LIVE_MAY_IMPORT = {"cli": {"serve", "train", "evaluation", "data"}, "router": {"serve"}, "onnx_encoder": {"data"}}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield "routoo_fast" + "".join("." + p for p in parts), path


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LEVEL else "live"


def _imports(module: str, path: Path):
    """(imported module, [names]) for every import statement, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names]


MODULES = dict(_modules())


def test_rooms_import_only_downward():
    bad = []
    for module, path in MODULES.items():
        room = _room(module)
        for target, names in _imports(module, path):
            if not target.startswith("routoo_fast"):
                continue
            targets = [target] + [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            for t in targets:
                other = _room(t)
                if other == room or LEVEL[other] < LEVEL[room]:
                    continue
                if room == "live" and other in LIVE_MAY_IMPORT.get(module.split(".")[-1], ()):
                    continue
                bad.append(f"{module} ({room}) imports {t} ({other})")
    assert not bad, "imports pointing up the layers:\n" + "\n".join(bad)


def test_no_private_name_imported_across_modules():
    bad = []
    for module, path in MODULES.items():
        for target, names in _imports(module, path):
            if target.startswith("routoo_fast") and target != module:
                bad += [f"{module}: from {target} import {n}" for n in names
                        if n.startswith("_") and not n.startswith("__") and f"{target}.{n}" not in MODULES
                        and not (target == "routoo_fast" and list(PKG.glob(f"{n}.*.so")))]  # the C++ extension
    assert not bad, "\n".join(bad)


def test_no_import_cycles_at_module_level():
    """Module-level imports between package modules form no cycle (lazy imports inside functions are allowed)."""
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        deps = set()
        for node in tree.body:  # top level only
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
                for n in node.names:
                    full = f"{target}.{n.name}"
                    deps.add(full if full in MODULES else target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[module] = {d for d in deps if d in MODULES and d != module}
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for d in graph[m]:
            if state.get(d) == "open":
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_import_routoo_fast_is_cheap():
    code = ("import sys, routoo_fast\n"
            "heavy = [m for m in ('torch', 'transformers', 'triton', 'matplotlib', 'routoo_fast.data', "
            "'routoo_fast.train', 'routoo_fast.evaluation') if m in sys.modules]\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_no_private_attribute_reached_into_from_outside():
    """`obj._name` only on self / cls / super() (an override calling its base's hook): another object's private
    attribute (e.g. the encoder's pooling mask, once re-implemented through `encoder._pooling_mask` by training) is
    a contract nobody promised."""

    def own(value) -> bool:
        return (isinstance(value, ast.Name) and value.id in ("self", "cls")) or (
            isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super")

    bad = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not own(node.value)):
                bad.append(f"{module}:{node.lineno}: .{node.attr}")
    assert not bad, "\n".join(bad)
