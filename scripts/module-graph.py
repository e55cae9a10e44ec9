#!/usr/bin/env python3
"""Prints the module graph of src/: which top-level module uses which, the
import cycles, and the layers (the longest chain of uses below each module).

Usage: scripts/module-graph.py [--top] [--strict] [--check] [SRC_DIR]

With --check it prints nothing and exits 1, naming the problem, when there is
an import cycle between files or between top-level modules, or when a
top-level module imports one that src/lib.rs lists before it (lib.rs lists
them in the request path's order, top to bottom).

A module is a file (src/proxy/handler.rs is `proxy::handler`, a mod.rs is its
folder), or with --top a file or folder directly under src/. A use is any
`crate::a::b` path in a module's code, resolved to the longest module it
names; `super::` and `self::` paths are resolved against the file's place
(`super::x` in src/cache/judge.rs is `cache::x`), so a relative path hides
nothing. With --strict, a `mod x;` line is a use of `x` by the module that
declares it too, so a mod.rs whose children use its types is a cycle. A module's use of its own child, or of its parent's facade, counts
like any other. Comments are ignored, tests are not (a test's import is an
import too).
"""

import re
import signal
import sys
from pathlib import Path


signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends it quietly
TOP = "--top" in sys.argv
CHECK = "--check" in sys.argv
STRICT = "--strict" in sys.argv


def module_of(path: Path, src: Path) -> str:
    rel = path.relative_to(src)
    if TOP:
        return rel.parts[0].removesuffix(".rs")
    parts = list(rel.parts)
    parts[-1] = parts[-1].removesuffix(".rs")
    if parts[-1] == "mod":
        parts.pop()
    return "::".join(parts)


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def expand(group: str, prefix: str = "") -> list[str]:
    """The paths of a `use` group body: `a::{b, c::d}` gives a::b, a::c::d."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(group + ","):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(group[start:i].strip())
            start = i + 1
    out = []
    for item in filter(None, items):
        if "::{" in item:
            head, rest = item.split("::{", 1)
            out += expand(rest.rsplit("}", 1)[0], f"{prefix}{head}::")
        else:
            out.append(prefix + item.split(" as ")[0].strip())
    return out


def crate_paths(code: str, here: list[str], is_mod: bool) -> list[str]:
    """Every `crate::...` path in `code`, `use crate::{...}` groups expanded,
    with `super::` and `self::` paths made absolute; `here` is the file's
    module path (`["cache", "judge"]`), `is_mod` whether it is a mod.rs."""
    # The module a `self::` names, and the one a `super::` names.
    own = here if is_mod else here
    parent = here[:-1]
    bases = {"crate": [], "self": own, "super": parent}
    paths = []
    for kw, base in bases.items():
        prefix = "::".join(base)
        prefix = prefix + "::" if prefix else ""
        rx = rf"(?<![\w:]){kw}::((?:super::)*)"
        for m in re.finditer(rx + r"(\w+(?:::\w+)*)\b(?!::\{)", code):
            b = base[: len(base) - m.group(1).count("super::")] if m.group(1) else base
            pre = "::".join(b) + "::" if b else ""
            paths.append(pre + m.group(2))
        for m in re.finditer(rx + r"((?:\w+::)*)\{", code):
            b = base[: len(base) - m.group(1).count("super::")] if m.group(1) else base
            pre = "::".join(b) + "::" if b else ""
            depth, i = 1, m.end()
            while i < len(code) and depth:
                depth += {"{": 1, "}": -1}.get(code[i], 0)
                i += 1
            paths += expand(code[m.end():i - 1], pre + m.group(2))
    return paths


def graph(src: Path) -> dict[str, set[str]]:
    mods = {module_of(p, src) for p in src.rglob("*.rs")}
    mods -= {"lib", "main"}
    uses: dict[str, set[str]] = {m: set() for m in mods}
    for p in src.rglob("*.rs"):
        m = module_of(p, src)
        if m not in uses:
            continue
        rel = p.relative_to(src)
        here = list(rel.parts)
        here[-1] = here[-1].removesuffix(".rs")
        is_mod = here[-1] == "mod"
        if is_mod or here[-1] in ("lib", "main"):
            here.pop()
        code = strip_comments(p.read_text())
        # NOTE: a file's own `mod tests` says `super::*` for the file itself.
        code = re.sub(r"use super::\*;", "", code)
        # NOTE: a module declared here (`mod x;`) is used here: a facade
        # calling `x::f()` without a prefix still depends on `x`.
        declared = re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", code, flags=re.M)
        declared = ["::".join(here + [d]) for d in declared] if STRICT else []
        for path in crate_paths(code, here, is_mod) + declared:
            parts = path.split("::")
            name = next(
                ("::".join(parts[:i]) for i in range(len(parts), 0, -1)
                 if "::".join(parts[:i]) in mods),
                None,
            )
            if name and name != m:
                uses[m].add(name)
    return uses


def cycles(uses: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(uses[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(uses):
        if v not in index:
            visit(v)
    return out


def layers(uses: dict[str, set[str]], comps: list[list[str]]) -> dict[str, int]:
    """Layer of each module: 0 for a leaf, else 1 + the highest layer it uses,
    with each cycle taken as one node."""
    rep = {m: m for m in uses}
    for comp in comps:
        for m in comp:
            rep[m] = comp[0]
    dag: dict[str, set[str]] = {}
    for m, us in uses.items():
        dag.setdefault(rep[m], set()).update(rep[u] for u in us if rep[u] != rep[m])
    memo: dict[str, int] = {}

    def depth(n: str) -> int:
        if n not in memo:
            memo[n] = 1 + max((depth(u) for u in dag.get(n, ())), default=-1)
        return memo[n]

    return {m: depth(rep[m]) for m in uses}


def check(src: Path) -> int:
    global TOP
    problems = []
    for top in (False, True):
        TOP = top
        for comp in cycles(graph(src)):
            problems.append("cycle: " + " <-> ".join(comp))
    TOP = True
    uses = graph(src)
    order = re.findall(r"^pub mod (\w+);", (src / "lib.rs").read_text(), flags=re.M)
    for m, us in uses.items():
        for u in us:
            if m in order and u in order and order.index(u) < order.index(m):
                problems.append(f"{m} imports {u}, which lib.rs lists before it")
    for p in problems:
        print(p)
    return 1 if problems else 0


def main() -> None:
    args = [a for a in sys.argv[1:] if a not in ("--top", "--check", "--strict")]
    src = Path(args[0] if args else "src")
    if CHECK:
        sys.exit(check(src))
    uses = graph(src)
    comps = cycles(uses)
    lay = layers(uses, comps)
    print(f"{len(uses)} modules on {max(lay.values()) + 1} layers, {len(comps)} cycles")
    for comp in comps:
        print("  cycle: " + " <-> ".join(comp))
    for m in sorted(uses, key=lambda m: (-lay[m], m)):
        print(f"  L{lay[m]:<2} {m:<16} uses {', '.join(sorted(uses[m])) or '-'}")


if __name__ == "__main__":
    main()
