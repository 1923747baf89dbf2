#!/usr/bin/env python3
"""The layout check (issue 18): run by `meson test` as the test `layout`.

    tools/deps.py BUILD_DIR SOURCE_DIR [--graph]

Reads the object files of a build with nm(1): the global symbols each
object defines and the ones it takes from elsewhere. From them it builds
the file-level call graph (file A -> file B when A uses a symbol B
defines) and the folder-level graph, and fails when either has a circle,
listing it. It also checks the folder rules:

  - a file outside gateway/ uses only what gateway/gateway.h declares
    (gateway/internal.h is the data plane's own);
  - the data plane never uses the control plane: no gateway/ object takes
    a symbol defined in control/;
  - a folder's internal.h is included only by that folder's files;
  - no #include circle between our headers;
  - no .c/.h file in the source folders, tools/, tests/ or bench/ is over
    800 lines.

Unit tests, fuzz targets and benches may use a folder's internals (they
test them); they are left out of the folder rule, and nothing calls them,
so they cannot close a circle. Exit 0 when all holds, 1 otherwise.
"""
import os
import re
import subprocess
import sys
from collections import defaultdict

MAX_LINES = 800
SOURCE_FOLDERS = ('auth', 'compare', 'config', 'control', 'gateway', 'metrics',
                  'routing', 'tools', 'tests', 'bench')
# Folders whose objects are the program and its tools (checked by the
# folder rule); the rest of the objects (tests/, bench/) only by the graph.
PROGRAM_FOLDERS = ('auth', 'compare', 'config', 'control', 'gateway', 'metrics',
                   'routing', 'tools')
DEFINED = set('TDBRCVWGSi')     # nm's letters for a global definition


def objects(build):
    """Yields (object path, target dir, source path relative to the source tree)."""
    for root, dirs, files in os.walk(build):
        dirs[:] = [d for d in dirs if d not in ('meson-private', 'meson-logs', 'meson-info')]
        if not root.endswith('.p'):
            continue
        # build/<folder>/<target>.p/<name>.c.o; a file in a sub-folder of
        # <folder> is named <sub>_<name>.c.o (meson's flattening).
        folder = os.path.relpath(os.path.dirname(root), build)
        for f in files:
            if f.endswith('.c.o'):
                yield os.path.join(root, f), root, (folder, f[:-2])


def resolve_source(src_root, folder, flat):
    """Maps meson's flattened object name back to the source file."""
    direct = os.path.join(folder, flat)
    if os.path.exists(os.path.join(src_root, direct)):
        return direct
    parts = flat.split('_')
    for i in range(1, len(parts)):
        cand = os.path.join(folder, '/'.join(parts[:i]), '_'.join(parts[i:]))
        if os.path.exists(os.path.join(src_root, cand)):
            return cand
    return direct


def nm(path):
    out = subprocess.run(['nm', '-P', path], capture_output=True, text=True,
                         check=True).stdout
    defined, undefined = set(), set()
    for line in out.splitlines():
        f = line.split()
        if len(f) < 2:
            continue
        name, kind = f[0], f[1]
        if kind == 'U':
            undefined.add(name)
        elif kind in DEFINED:
            defined.add(name)
    return defined, undefined


def cycles(graph):
    """Tarjan's strongly connected components with more than one node."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def one_cycle(graph, comp):
    """A shortest circle through the component's first node, as a path."""
    start = comp[0]
    members = set(comp)
    prev = {start: None}
    queue = [start]
    while queue:
        nxt = []
        for v in queue:
            for w in sorted(graph.get(v, ())):
                if w not in members:
                    continue
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return list(reversed(path)) + [start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        queue = nxt
    return comp


def header_names(path):
    with open(path, encoding='utf-8') as f:
        text = f.read()
    text = re.sub(r'/\*.*?\*/', ' ', text, flags=re.S)
    return set(re.findall(r'\b[A-Za-z_]\w*\b', text))


def our_files(src_root):
    for top in SOURCE_FOLDERS:
        for root, dirs, files in os.walk(os.path.join(src_root, top)):
            dirs[:] = [d for d in dirs if d != 'corpus']
            for f in files:
                if f.endswith(('.c', '.h')):
                    yield os.path.relpath(os.path.join(root, f), src_root)


def include_problems(src_root):
    """Internal headers used outside their folder; #include circles."""
    out = []
    graph = defaultdict(set)
    for rel in our_files(src_root):
        with open(os.path.join(src_root, rel), encoding='utf-8', errors='replace') as f:
            incs = re.findall(r'^\s*#\s*include\s+"([^"]+)"', f.read(), flags=re.M)
        top = rel.split('/')[0]
        for inc in incs:
            target = inc if os.path.exists(os.path.join(src_root, inc)) else \
                os.path.normpath(os.path.join(os.path.dirname(rel), inc))
            if not os.path.exists(os.path.join(src_root, target)):
                continue    # generated (dashboard.h) or a system header
            graph[rel].add(target)
            if (os.path.basename(target) == 'internal.h' and top not in ('tests', 'bench')
                    and target.split('/')[0] != top):
                out.append(f'folder rule: {rel} includes {target}, internal to '
                           f'{target.split("/")[0]}/')
    for comp in cycles(graph):
        out.append('include circle: ' + ' -> '.join(one_cycle(graph, comp)))
    return out


def long_files(src_root):
    found = []
    for top in SOURCE_FOLDERS:
        for root, dirs, files in os.walk(os.path.join(src_root, top)):
            dirs[:] = [d for d in dirs if d != 'corpus']
            for f in files:
                if f.endswith(('.c', '.h')):
                    p = os.path.join(root, f)
                    with open(p, 'rb') as fh:
                        n = fh.read().count(b'\n')
                    if n > MAX_LINES:
                        found.append((n, os.path.relpath(p, src_root)))
    return sorted(found, reverse=True)


def main():
    args = [a for a in sys.argv[1:] if a != '--graph']
    if len(args) != 2:
        print('usage: ' + __doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    build, src_root = args
    objs = []           # (source, target dir, defined, undefined)
    for path, target, (folder, flat) in objects(build):
        src = resolve_source(src_root, folder, flat)
        if src.split('/')[0] not in SOURCE_FOLDERS:
            continue        # llhttp and anything else not ours
        d, u = nm(path)
        objs.append((src, target, d, u))
    if not objs:
        print(f'layout: no object files under {build}', file=sys.stderr)
        return 1

    # Where each symbol is defined: libraries (*.a.p) for everyone, an
    # executable's own objects for that executable.
    lib_def, target_def = {}, defaultdict(dict)
    for src, target, d, _ in objs:
        for s in d:
            target_def[target][s] = src
            if target.endswith('.a.p'):
                lib_def[s] = src

    graph = defaultdict(set)
    uses = defaultdict(lambda: defaultdict(set))    # src -> dst -> symbols
    for src, target, _, u in objs:
        graph.setdefault(src, set())
        for s in u:
            dst = target_def[target].get(s) or lib_def.get(s)
            if dst and dst != src:
                graph[src].add(dst)
                uses[src][dst].add(s)

    if '--graph' in sys.argv:       # the file graph, for a reader
        for a in sorted(graph):
            for b in sorted(graph[a]):
                print(f'{a} -> {b}: {", ".join(sorted(uses[a][b]))}')

    failed = False
    for comp in cycles(graph):
        failed = True
        path = one_cycle(graph, comp)
        print('file circle: ' + ' -> '.join(path))
        for a, b in zip(path, path[1:]):
            print(f'    {a} -> {b}: {", ".join(sorted(uses[a][b])[:6])}')
        if len(comp) > len(path) - 1:
            print('    (component: ' + ', '.join(comp) + ')')

    fgraph = defaultdict(set)
    for a, dsts in graph.items():
        fa = os.path.dirname(a)
        fgraph.setdefault(fa, set())
        for b in dsts:
            fb = os.path.dirname(b)
            if fa != fb:
                fgraph[fa].add(fb)
    for comp in cycles(fgraph):
        failed = True
        path = one_cycle(fgraph, comp)
        print('folder circle: ' + ' -> '.join(path))
        for a, b in zip(path, path[1:]):
            pairs = sorted(f'{x} -> {y}' for x in graph for y in graph[x]
                           if os.path.dirname(x) == a and os.path.dirname(y) == b)
            print(f'    {a} -> {b}: {"; ".join(pairs[:4])}')

    public = header_names(os.path.join(src_root, 'gateway', 'gateway.h'))
    for src in sorted(uses):
        top = src.split('/')[0]
        for dst, syms in sorted(uses[src].items()):
            if dst.startswith('gateway/') and top != 'gateway' and top in PROGRAM_FOLDERS:
                hidden = sorted(s for s in syms if s not in public)
                if hidden:
                    failed = True
                    print(f'folder rule: {src} uses gateway internals from {dst}: '
                          + ', '.join(hidden))
            if top == 'gateway' and dst.startswith('control/'):
                failed = True
                print(f'folder rule: the data plane calls the control plane: {src} -> {dst}: '
                      + ', '.join(sorted(syms)))

    for problem in include_problems(src_root):
        failed = True
        print(problem)

    for n, p in long_files(src_root):
        failed = True
        print(f'too long: {p}: {n} lines (at most {MAX_LINES})')

    nfiles = len(graph)
    nedges = sum(len(v) for v in graph.values())
    print(f'layout: {nfiles} files, {nedges} file edges, {len(fgraph)} folders: '
          + ('FAILED' if failed else 'ok'))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
