"""The package's layers (DESIGN.md, "The layout"): no module imports from a module that imports it, and
attack modules never import the referee's Oracle class (they annotate against AttackView)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports():
    mods = {}
    for p in (ROOT / "robench").rglob("*.py"):
        rel = p.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts)
        mods[name[:-9] if name.endswith(".__init__") else name] = p
    edges = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):  # module level and inside functions alike
            if isinstance(node, ast.Import):
                edges[m] |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(pkg.split(".")[:len(pkg.split(".")) - node.level + 1] + ([node.module] if node.module else []))
                for a in node.names:
                    full = f"{base}.{a.name}"
                    edges[m].add(full if full in mods else base)
    return mods, edges


def test_no_module_imports_a_module_that_imports_it():
    mods, edges = _imports()
    pairs = sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if b in edges and a in edges[b] and a != b})
    assert not pairs, pairs


def test_attack_modules_do_not_import_the_oracle_class():
    bad = []
    for p in (ROOT / "robench" / "attacks").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("robench.referee.oracle"):
                bad.append(str(p.relative_to(ROOT)))
            if isinstance(node, ast.ImportFrom) and any(a.name == "Oracle" for a in node.names):
                bad.append(str(p.relative_to(ROOT)))
    assert not bad, bad
