"""Docs that are rendered from code stay equal to what their command renders; the README stays
a newcomer's page (<= 10 KB, its first code block the two commands)."""

from pathlib import Path
import runpy

ROOT = Path(__file__).resolve().parent.parent


def test_parameters_page_is_rendered_from_the_parameter_tables():
    render = runpy.run_path(str(ROOT / 'scripts' / 'render_params_doc.py'))['render']
    assert (ROOT / 'docs' / 'parameters.md').read_text() == render(), \
        'docs/parameters.md is stale: scripts/render_params_doc.py > docs/parameters.md'


def test_readme_is_short_and_starts_with_the_two_commands():
    text = (ROOT / 'README.md').read_text()
    assert len(text.encode()) <= 10 * 1024
    block = text.split('```')[1].strip().splitlines()
    assert block[1:] == ['scripts/fluxshard eval', 'scripts/fluxshard test']
    for doc in ('design', 'engine', 'evaluation', 'reliability', 'security', 'parameters'):
        assert f'docs/{doc}.md' in text and (ROOT / 'docs' / f'{doc}.md').is_file()
