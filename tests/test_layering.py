"""The import layers of docs/DESIGN.md hold: no module imports a higher layer, siblings of one
layer do not import each other, there are no import cycles, and no import hidden in a function
body crosses packages (those hid the old upward edges). Imports are read with `ast` from the
source (top level, inside functions and classes alike), nothing is executed.

Layers, lowest first (a module may import its own group and any group of a LOWER layer):
"""

import ast
import os
from collections import defaultdict

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LAYERS = [
    ("constants", "cq_codec.training.atomic"),                # atomic.py: file utilities, no repo imports
    ("lpc",),
    ("cq_codec.codes",),                                     # Codes / CodeChunk, entropy of codes
    ("cq_codec.quantizers", "cq_codec.nn", "cq_codec.data", "cq_codec.bitstream", "cq_codec.losses",
     "cq_codec.backends"),
    ("cq_codec.models", "cq_codec.inference", "cq_codec.evaluation", "cq_codec.flops"),
    ("cq_codec.config",),                                    # imports the registries' names
    ("cq_codec.training",),
    ("cq_codec.waveform_api",),                              # the waveform codec behind the API's interface
    ("cq_codec.api",),                                       # load() dispatches to either codec
    ("cq_codec",),                                           # the package's __init__ (re-exports load)
    ("cq_codec.experiment",),                                # main.py's driver, shared by the studies
    ("main", "cq_codec.__main__"),                           # the two command lines
    ("scripts",),
]
# Function-body imports that cross groups, each with its reason. Everything else is imported at
# the top of its module, where the edge is visible.
# Modules that form one group with another (none today).
SAME_GROUP: dict = {}
# Known module cycles, each with its reason (the test fails on any other; none today).
KNOWN_CYCLES: dict = {}
# Known upward edges (module, imported), each with its reason (the test fails on any other; none today).
KNOWN_UPWARD: dict = {}
LAZY = {
    ("cq_codec", "cq_codec.api"): "PEP 562: `import cq_codec` must not load TensorFlow",
}
# Modules whose function-body imports are not checked (none today).
UNCHECKED_LAZY: dict = {}
__doc__ += "\n".join("  " + ", ".join(g) for g in LAYERS)

_GROUP_LAYER = {g: i for i, groups in enumerate(LAYERS) for g in groups}


def _modules() -> dict[str, str]:
    out = {name[:-3]: os.path.join(ROOT, name) for name in ("constants.py", "main.py")}
    for pkg in ("lpc", "cq_codec", "scripts"):
        for d, dirs, files in os.walk(os.path.join(ROOT, pkg)):
            dirs[:] = [x for x in dirs if not x.startswith((".", "__pycache__"))]
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(d, f), ROOT)[:-3].replace(os.sep, ".")
                    out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(d, f)
    return out


MODULES = _modules()


def group_of(module: str) -> str | None:
    """The longest LAYERS name that is the module or one of its packages (`cq_codec` only for
    the package's own __init__)."""
    if module in SAME_GROUP:
        return SAME_GROUP[module]
    best = None
    for g in _GROUP_LAYER:
        if (module == g or (module.startswith(g + ".") and g != "cq_codec")) and (best is None or len(g) > len(best)):
            best = g
    return best


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> list[tuple[str, int, bool]]:
    """[(imported repo module, line, inside a function body)] of one module."""
    path = MODULES[module]
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(parts + ([child.module] if child.module else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in child.names]
            for n in names:
                target = _resolve(n)
                if target and target != module:
                    found.append((target, child.lineno, inner))
            visit(child, inner)

    visit(tree, False)
    return found


EDGES = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if group_of(m) is None)
    assert not missing, f"modules in no layer (add them to LAYERS here and in docs/DESIGN.md): {missing}"


def test_no_module_imports_a_higher_layer_or_a_sibling():
    bad = []
    for m, edges in EDGES.items():
        gm = group_of(m)
        for target, line, _ in edges:
            gt = group_of(target)
            if gm is None or gt is None or gt == gm:
                continue
            if _GROUP_LAYER[gt] >= _GROUP_LAYER[gm] and (m, target) not in KNOWN_UPWARD:
                kind = "a sibling" if _GROUP_LAYER[gt] == _GROUP_LAYER[gm] else "a higher layer"
                bad.append(f"{MODULES[m][len(ROOT) + 1:]}:{line} ({gm}) imports {target} ({gt}): {kind}")
    assert not bad, "imports against docs/DESIGN.md's layers:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = {m: {t for t, _, _ in edges} for m, edges in EDGES.items()}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                if frozenset(cycle) not in KNOWN_CYCLES:
                    cycles.append(cycle)
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_hidden_cross_package_imports_in_the_library():
    """Inside cq_codec/ and lpc/, an import in a function body that reaches another group hides an
    edge; only the LAZY ones (with reasons) are allowed. Scripts (the top) may import lazily."""
    bad = []
    for m, edges in EDGES.items():
        if group_of(m) in ("scripts", "main", "cq_codec.__main__") or m in UNCHECKED_LAZY:
            continue
        for target, line, inner in edges:
            if (inner and group_of(target) != group_of(m) and (group_of(m), group_of(target)) not in LAZY
                    and (m, target) not in KNOWN_UPWARD):
                bad.append(f"{MODULES[m][len(ROOT) + 1:]}:{line} imports {target} inside a function")
    assert not bad, "hidden imports (move them to the top of the module):\n" + "\n".join(bad)


@pytest.mark.parametrize("module, group", [("cq_codec.bitstream.codec_stream", "cq_codec.bitstream"),
                                           ("cq_codec", "cq_codec"), ("cq_codec.api", "cq_codec.api"),
                                           ("scripts.demo", "scripts"), ("lpc.tf_ops", "lpc")])
def test_group_lookup(module, group):
    assert group_of(module) == group


def test_the_checker_sees_function_body_and_relative_imports(tmp_path, monkeypatch):
    """The parser itself: an upward import inside a function and a relative import are found."""
    src = "import constants\n\ndef f():\n    from cq_codec import api\n    from . import entropy\n"
    path = tmp_path / "probe.py"
    path.write_text(src)
    monkeypatch.setitem(MODULES, "cq_codec.bitstream.probe", str(path))
    got = {(t, inner) for t, _, inner in imports_of("cq_codec.bitstream.probe")}
    assert got == {("constants", False), ("cq_codec.api", True), ("cq_codec.bitstream.entropy", True)}
