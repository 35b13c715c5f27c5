#!/usr/bin/env python3
"""depcheck.py -- the house's dependency rules, checked on the source tree and the built objects.

A file depends on another when it #includes it, or when its object calls (or reads) a symbol that only
the other file's object defines (a foo.c and its foo.h count as one room). The rules:
  1. no cycle among rooms, by either kind of edge;
  2. the layers hold: runtime/ includes nothing of ours above it; wire/ only runtime/; kernels/ only
     runtime/ and wire/; actors/ nothing from cmd/ or test/.
Prints each cycle or layer breach and exits 1; with none, one line and exit 0.

Usage: scripts/depcheck.py BUILD_DIR   (the objects under BUILD_DIR/obj, after `make`)
"""
import os
import re
import subprocess
import sys

LAYERS = {"runtime": {"runtime"}, "wire": {"runtime", "wire"}, "kernels": {"runtime", "wire", "kernels"},
          "actors": {"runtime", "wire", "kernels", "actors"}}
SRC_DIRS = ("runtime", "wire", "kernels", "actors")


def room(path):
    """A room: the path without its .c/.h ending."""
    return os.path.splitext(path)[0]


def sources():
    out = []
    for top in SRC_DIRS:
        for dirpath, _, files in os.walk(top):
            out += [os.path.join(dirpath, f) for f in files if f.endswith((".c", ".h"))]
    return sorted(out)


def include_edges(files):
    inc = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
    edges = {}
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                m = inc.match(line)
                if m and os.path.exists(m.group(1)) and room(m.group(1)) != room(f):
                    edges.setdefault(room(f), set()).add(room(m.group(1)))
    return edges


def symbol_edges(build):
    defined, undefined = {}, {}
    objdir = os.path.join(build, "obj")
    for top in SRC_DIRS:
        for dirpath, _, files in os.walk(os.path.join(objdir, top)):
            for f in files:
                if not f.endswith(".o"):
                    continue
                obj = os.path.join(dirpath, f)
                r = room(os.path.relpath(obj, objdir))
                if not os.path.exists(r + ".c"):
                    continue                    # left over from a file that moved or went away
                nm = subprocess.run(["nm", obj], capture_output=True, text=True, check=True).stdout
                for line in nm.splitlines():
                    parts = line.split()
                    if len(parts) == 2 and parts[0] == "U":
                        undefined.setdefault(r, set()).add(parts[1])
                    elif len(parts) == 3 and parts[1] in "TDBRVW" :
                        defined[parts[2]] = r
    edges = {}
    for r, syms in undefined.items():
        for s in syms:
            d = defined.get(s)
            if d and d != r:
                edges.setdefault(r, set()).add(d)
    return edges


def cycles(edges):
    """Tarjan's strongly connected components with more than one room."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    nodes = set(edges) | {d for ds in edges.values() for d in ds}

    def visit(v):
        work = [(v, iter(sorted(edges.get(v, ()))))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    advanced = True
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    files = sources()
    bad = 0
    inc = include_edges(files)
    for name, edges in (("#include", inc), ("symbol", symbol_edges(sys.argv[1]))):
        for comp in cycles(edges):
            print(f"depcheck: {name} cycle among: {' '.join(comp)}")
            bad += 1
    for src, dsts in sorted(inc.items()):
        allowed = LAYERS[src.split("/")[0]]
        for d in sorted(dsts):
            if d.split("/")[0] not in allowed:
                print(f"depcheck: layer breach: {src} includes {d}")
                bad += 1
    if bad:
        print(f"depcheck: {bad} problem(s)")
        return 1
    print(f"depcheck: {len(files)} files, no dependency cycle, layers hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
