#!/usr/bin/env python3
"""Fails when the top-level modules of a crate form a cycle.

For every crate of the workspace (a folder with Cargo.toml and src/), each
top-level module is `src/<name>.rs` or `src/<name>/`; an edge a -> b is a
`crate::b` path in a's non-test code (inline `#[cfg(test)] mod tests { }`
blocks and `tests.rs` files are left out: tests may reach anywhere). Prints
each crate's module graph in dependency order, or the cycle and exit 1.
"""
import os
import re
import sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def crates():
    for entry in sorted(os.listdir(root)):
        src = os.path.join(root, entry, "src")
        if os.path.isfile(os.path.join(root, entry, "Cargo.toml")) and os.path.isdir(src):
            yield entry, src


def strip_tests(text):
    """Drops inline test modules (from `#[cfg(test)]` before `mod ... {`)."""
    out, depth, skipping = [], 0, False
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if not skipping and line.strip() == "#[cfg(test)]" and i + 1 < len(lines) \
                and re.match(r"\s*(pub(\(\w+\))? )?mod \w+ \{", lines[i + 1]):
            skipping, depth = True, 0
            i += 1
            continue
        if skipping:
            depth += line.count("{") - line.count("}")
            if depth <= 0 and "}" in line:
                skipping = False
            i += 1
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def paths_in(text, depth):
    """Every module name right after the crate root: `crate::a`,
    `crate::{a, b::c}`, or as many `super::` as the file is deep."""
    text = re.sub(r"//[^\n]*", "", text)  # comments and doc comments
    roots = [r"\bcrate::", r"\b" + r"super::" * depth]
    names = set()
    for root in roots:
        names.update(re.findall(root + r"([a-z_][a-z0-9_]*)", text))
        for group in re.findall(root + r"\{([^}]*)\}", text):
            names.update(re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)", group))
    return names


def depth_of(src, path):
    """How many `super::` lead from this file's module to the crate root."""
    parts = os.path.relpath(path, src).split(os.sep)
    if parts[-1] == "mod.rs":
        parts = parts[:-1]
    return len(parts)


def graph(src):
    modules = {}
    for entry in os.listdir(src):
        path = os.path.join(src, entry)
        if entry in ("lib.rs", "main.rs"):
            continue
        if entry.endswith(".rs"):
            modules[entry[:-3]] = [path]
        elif os.path.isdir(path):
            files = []
            for d, _, fs in os.walk(path):
                files += [os.path.join(d, f) for f in fs if f.endswith(".rs")]
            modules[entry] = files
    edges = {m: set() for m in modules}
    for m, files in modules.items():
        for f in files:
            if os.path.basename(f) == "tests.rs" or os.sep + "tests" + os.sep in f:
                continue
            with open(f, encoding="utf-8") as fh:
                text = strip_tests(fh.read())
            found = paths_in(text, depth_of(src, f))
            edges[m] |= {n for n in found if n in modules and n != m}
    return edges


def find_cycle(edges):
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for t in sorted(edges[n]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def layers(edges):
    """Modules in dependency order: each after everything it uses."""
    order, done = [], set()
    while len(done) < len(edges):
        ready = sorted(m for m in edges if m not in done and edges[m] <= done)
        order.append(ready)
        done |= set(ready)
    return order


failed = False
for name, src in crates():
    edges = graph(src)
    cycle = find_cycle(edges)
    if cycle:
        failed = True
        print(f"{name}: CYCLE {' -> '.join(cycle)}")
        for m in cycle[:-1]:
            print(f"  {m} uses {', '.join(sorted(edges[m]))}")
    else:
        print(f"{name}: no cycle among {len(edges)} modules; layers bottom-up: "
              + " | ".join(" ".join(layer) for layer in layers(edges)))
sys.exit(1 if failed else 0)
