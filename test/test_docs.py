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


def test_an_empty_or_unreadable_render_block_fails():
    """A region the renderer cannot read, or one left empty, is an error (an empty
    `engine-eval` region once passed the staleness check because `(\\w+)` skipped it)."""
    import pytest
    mod = runpy.run_path(str(ROOT / 'scripts' / 'render_docs.py'))
    empty = '<!-- render: engine-eval docs/data/engine-eval.json -->\n<!-- end render -->\n'
    with pytest.raises(ValueError, match='empty'):
        mod['check_markers'](empty)
    for bad in ('<!-- render: engine.eval docs/data/engine-eval.json -->\nx\n<!-- end render -->',
                '<!-- render: bench docs/data/bench.json -->\nno end marker\n'):
        with pytest.raises(ValueError, match='render markers'):
            mod['check_markers'](bad)
    # the committed pages: every region filled, and as many regions as markers
    for page in sorted((ROOT / 'docs').glob('*.md')):
        mod['check_markers'](page.read_text())
    # rendering fills an empty region from its JSON (so the committed page would be stale)
    assert mod['render_page'](empty).count('\n| detect |') >= 7
