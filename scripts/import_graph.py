"""The import graph of the repository against docs/DESIGN.md's layers (what tests/test_layering.py
checks), as numbers: modules, floors (the longest import chain, each module one floor), imports
inside function bodies, edges against the layer order, cycles between groups.

    python scripts/import_graph.py [--root PATH] [--edges]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys


def _layering(root: str):
    spec = importlib.util.spec_from_file_location("_layering", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                            "..", "tests", "test_layering.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if os.path.abspath(root) != mod.ROOT:       # the same layers, another checkout's modules
        mod.ROOT = os.path.abspath(root)
        mod.MODULES = mod._modules()
        mod.EDGES = {m: mod.imports_of(m) for m in mod.MODULES}
    return mod


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    p.add_argument("--edges", action="store_true", help="list every module with its floor and imports")
    args = p.parse_args(argv)
    tl = _layering(args.root)
    edges = tl.EDGES
    floors: dict = {}

    def floor(m, stack=()):
        if m not in floors:
            floors[m] = 1 + max((floor(t, stack + (m,)) for t, _, _ in edges[m] if t not in stack + (m,)), default=0)
        return floors[m]

    lib = [m for m in tl.MODULES if tl.group_of(m) != "scripts"]
    print(f"modules: {len(tl.MODULES)} ({len(lib)} outside scripts/)")
    print(f"floors: {max(floor(m) for m in tl.MODULES)} (outside scripts/: {max(floor(m) for m in lib)})")
    inner = [(m, t) for m in edges for t, _, i in edges[m] if i]
    print(f"repo imports inside function bodies: {len(inner)} "
          f"(outside scripts/: {sum(1 for m, _ in inner if tl.group_of(m) != 'scripts')})")
    against, groups = [], {}
    for m, es in edges.items():
        for t, line, i in es:
            gm, gt = tl.group_of(m), tl.group_of(t)
            if gm and gt and gm != gt:
                groups.setdefault(gm, set()).add(gt)
                if tl._GROUP_LAYER[gt] >= tl._GROUP_LAYER[gm]:
                    against.append(f"{m} -> {t}" + (" (inside a function)" if i else ""))
    print(f"edges against the layer order: {len(set(against))}")
    for e in sorted(set(against)):
        print("  " + e)
    cycles = sorted({tuple(sorted((a, b))) for a in groups for b in groups[a] if a in groups.get(b, ())})
    print(f"groups importing each other: {cycles or 'none'}")
    if args.edges:
        for m in sorted(tl.MODULES, key=lambda m: (floor(m), m)):
            print(floor(m), m, sorted(t + ("*" if i else "") for t, _, i in edges[m]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
