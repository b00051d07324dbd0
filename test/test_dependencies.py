"""Dependencies point one way (ARCHITECTURE.md, "Edge and server meet only over messages"):
the GPU host installs fluxshard_msgs, fluxshard_kernels and fluxshard_server, never robot code;
a robot installs fluxshard_edge without server code; tools that need both live above them in
fluxshard_eval. Checked on the imports of every module (tests included) and on package.xml."""

import ast
from pathlib import Path
import xml.etree.ElementTree as ET

import pytest

SRC = Path(__file__).resolve().parent.parent / 'src'
OURS = {'fluxshard_msgs', 'fluxshard_msgs_py', 'fluxshard_kernels', 'fluxshard_edge',
        'fluxshard_server', 'fluxshard_eval'}
#: package -> the FluxShard packages its code may import (besides itself)
ALLOWED = {
    'fluxshard_kernels': set(),
    'fluxshard_msgs': {'fluxshard_msgs', 'fluxshard_msgs_py', 'fluxshard_kernels'},
    'fluxshard_edge': {'fluxshard_msgs', 'fluxshard_msgs_py', 'fluxshard_kernels'},
    'fluxshard_server': {'fluxshard_msgs', 'fluxshard_msgs_py', 'fluxshard_kernels'},
    'fluxshard_eval': OURS,
}


def _imports(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name.split('.')[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module.split('.')[0]
        elif (isinstance(node, ast.Call) and getattr(node.func, 'id', '') == '__import__'
              and node.args and isinstance(node.args[0], ast.Constant)):
            yield node.lineno, str(node.args[0].value).split('.')[0]


@pytest.mark.parametrize('package', sorted(ALLOWED))
def test_imports_point_one_way(package):
    own = {package, 'fluxshard_msgs_py'} if package == 'fluxshard_msgs' else {package}
    bad = []
    files = sorted((SRC / package).rglob('*.py'))
    assert files, package
    for f in files:
        for line, mod in _imports(f):
            if mod in OURS and mod not in own | ALLOWED[package]:
                bad.append(f'{f.relative_to(SRC)}:{line} imports {mod}')
            if package == 'fluxshard_kernels' and mod in ('rclpy', 'fluxshard_msgs'):
                bad.append(f'{f.relative_to(SRC)}:{line} imports {mod} (kernels are ROS-free)')
    assert not bad, '\n'.join(bad)


@pytest.mark.parametrize('package', sorted(ALLOWED))
def test_package_xml_declares_the_same_direction(package):
    root = ET.parse(SRC / package / 'package.xml').getroot()
    deps = {e.text.strip() for e in root if e.tag.endswith('depend')}
    ours = deps & OURS
    assert ours <= ALLOWED[package], f'{package} depends on {sorted(ours - ALLOWED[package])}'
    if package in ('fluxshard_edge', 'fluxshard_server'):
        assert {'fluxshard_msgs', 'fluxshard_kernels'} <= deps


def _module_graph():
    """module name -> the FluxShard modules it imports (any place in the file)."""
    mods = {}
    for f in SRC.rglob('*.py'):
        parts = f.relative_to(SRC).with_suffix('').parts[1:]  # below the ROS package folder
        if not parts or parts[0] not in OURS or 'test' in parts:
            continue
        name = '.'.join(p for p in parts if p != '__init__')
        tree = ast.parse(f.read_text(), str(f))
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                deps.add(node.module)
                deps |= {f'{node.module}.{a.name}' for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        mods[name] = deps
    return {m: {d for d in deps if d in mods and d != m} for m, deps in mods.items()}


def test_no_import_circles_between_modules():
    """Module imports form no circle (e.g. the payload: proxy -> codec_mv, never back)."""
    graph = _module_graph()
    assert 'fluxshard_kernels.proxy' in graph and graph['fluxshard_kernels.codec_mv']
    state, cycles = {}, []

    def visit(m, path):
        state[m] = 'open'
        for d in sorted(graph[m]):
            if state.get(d) == 'open':
                cycles.append(' -> '.join(path[path.index(d):] + [d]))
            elif d not in state:
                visit(d, path + [d])
        state[m] = 'done'
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, '\n'.join(cycles)
