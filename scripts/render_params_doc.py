#!/usr/bin/env python3
"""Render docs/parameters.md from the nodes' parameter tables (the same tables that declare the
parameters, validate runtime changes and print ``--help``), so the page cannot drift.

Usage: scripts/fluxshard run python scripts/render_params_doc.py > docs/parameters.md
(test/test_docs.py checks the committed page equals this output.)
"""

import sys


def table(params):
    out = ['| name | default | allowed | live | meaning |', '|---|---|---|---|---|']
    for p in params:
        if p.choices is not None:
            allowed = ', '.join(f'`{c!r}`' for c in p.choices)
        elif p.lo is not None and p.hi is not None:
            allowed = f'{p.lo:g} .. {p.hi:g}'
        else:
            allowed = ''
        desc = p.description.replace('|', '\\|')
        out.append(f'| `{p.name}` | `{p.default!r}` | {allowed} | {"yes" if p.live else ""} '
                   f'| {desc} |')
    return '\n'.join(out)


def render() -> str:
    from fluxshard_edge import edge_node
    from fluxshard_eval import image_publisher_node
    from fluxshard_server import server_node
    return f"""# Parameters

Rendered by `scripts/render_params_doc.py` from the tables the nodes declare their parameters
from (the same tables print `--help` and validate runtime changes). Every parameter has a
descriptor with its range or allowed values. **live** parameters can be changed on a running
node (`ros2 param set`, or a SetParameters call): the value is validated (range, choices,
type; integers too) and applied from the next frame; a refused value returns the reason. All
others are read-only (set them at start: `-p name:=value` or `--params-file`). Back to the
[README](../README.md).

## Edge (`ros2 run fluxshard_edge edge_node`, node `fluxshard_edge`, `config/edge.yaml`)

{table(edge_node.PARAMS)}

## Server (`ros2 run fluxshard_server server_node`, node `fluxshard_server`, `config/server.yaml`)

{table(server_node.PARAMS)}

## Camera replay (`ros2 run fluxshard_eval image_publisher`)

{table(image_publisher_node.PARAMS)}
"""


if __name__ == '__main__':
    sys.stdout.write(render())
