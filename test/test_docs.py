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


def test_measured_tables_are_rendered_from_the_saved_json():
    """Every rendered region of docs/*.md equals what scripts/render_docs.py makes of its JSON,
    and the evaluation page has one."""
    mod = runpy.run_path(str(ROOT / 'scripts' / 'render_docs.py'))
    regions = 0
    for page in sorted((ROOT / 'docs').glob('*.md')):
        text = page.read_text()
        regions += len(mod['REGION'].findall(text))
        assert mod['render_page'](text) == text, \
            f'{page.name} is stale: scripts/fluxshard run python scripts/render_docs.py'
    assert regions >= 1 and '<!-- render: eval' in (ROOT / 'docs' / 'evaluation.md').read_text()
