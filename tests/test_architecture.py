"""The shape of the code, checked: the `research` import graph has no cycle (imports inside
functions count), `from research` imports sit at module top, and no module outside the dataset
specs branches on a dataset's kind by name."""
import ast
import os
import re

from tests import helpers

RESEARCH = os.path.join(helpers.ROOT, 'research')
# Where a dataset kind may be tested by name: the catalog and the kinds' specs.
SPEC_MODULES = {'research.data.catalog', 'research.data.specs', 'research.data.corpus',
                'research.data.dialogue', 'research.data.preferences'}


def _modules() -> dict[str, str]:
  out = {}
  for d, _, files in os.walk(RESEARCH):
    for f in files:
      if f.endswith('.py'):
        path = os.path.join(d, f)
        name = os.path.relpath(path, helpers.ROOT)[:-3].replace(os.sep, '.')
        out[name.removesuffix('.__init__')] = path
  return out


def _imports(name: str, path: str, modules: dict) -> dict[str, list[tuple[int, bool]]]:
  """research modules `name` imports -> [(line, inside a function)], resolving `from pkg import
  mod` to the module when it is one."""
  tree = ast.parse(open(path).read())
  package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
  inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
           for n in ast.walk(f)}
  out = {}
  for node in ast.walk(tree):
    targets = []
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = package.split('.')[:len(package.split('.')) - node.level + 1]
        base = '.'.join(parts + ([base] if base else []))
      targets = [f'{base}.{a.name}' if f'{base}.{a.name}' in modules else base
                 for a in node.names]
    for t in targets:
      if t in modules and t != name:
        out.setdefault(t, []).append((node.lineno, id(node) in inner))
  return out


def _graph():
  modules = _modules()
  return {m: _imports(m, p, modules) for m, p in modules.items()}


def _cycles(graph: dict) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in graph[v]:
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


def test_cycle_finder_finds_a_planted_cycle():
  graph = {'a': {'b': []}, 'b': {'c': []}, 'c': {'a': []}, 'd': {'a': []}}
  assert _cycles(graph) == [['a', 'b', 'c']]
  assert _cycles({'a': {'b': []}, 'b': {}}) == []


def test_no_import_cycle_among_research_modules():
  graph = _graph()
  assert len(graph) > 50 and 'research.data.datasets' in graph['research.data.pipeline']
  cycles = _cycles(graph)
  detail = [[(a, b, graph[a][b]) for a in c for b in graph[a] if b in c] for c in cycles]
  assert not cycles, detail


# `from research` imports inside functions that are allowed, and why: TFDS and JAX are slow to
# import, and a config or data check must not pay for them (tests/test_data.py
# test_validate_is_cheap asserts it).
DEFERRED = {('research.data.sources', 'research.data.builders._base'),      # TFDS
            ('research.configs', 'research.family'), ('research.configs', 'research.optim'),
            ('research.configs', 'research.precision'),
            ('research.configs', 'research.sharding')}                     # JAX


def test_research_imports_are_at_module_top():
  inner = sorted((m, t, line) for m, targets in _graph().items() for t, uses in targets.items()
                 for line, is_inner in uses if is_inner and (m, t) not in DEFERRED)
  assert not inner, inner


def test_no_dataset_kind_branching_outside_the_specs():
  """Families and commands ask the registry (datasets.spec, require_kind, names_of), never an
  is_text / is_toy / is_dialogue-style predicate."""
  pattern = re.compile(r'\bis_(text|toy|dialogue|prompts|preferences|sentences|derived|image)\(')
  hits = [(m, i + 1, line.strip()) for m, p in _modules().items() if m not in SPEC_MODULES
          for i, line in enumerate(open(p)) if pattern.search(line)]
  assert not hits, hits
