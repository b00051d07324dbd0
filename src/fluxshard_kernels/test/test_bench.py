"""The engine benchmark prints where a step's time goes beside the dense runtimes."""

import json

from fluxshard_kernels import bench


def test_engine_breakdown_and_ratios_side_by_side(tmp_path, capsys):
    out = tmp_path / 'b.json'
    assert bench.main(['--quick', '--sections', 'engine', '--threads', '2',
                       '--json', str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res) >= {'meta', 'engine', 'command'} and 'motion' not in res
    for r in res['engine']:
        st = r['stages_ms']
        assert {'warp', 'masks', 'gather', 'conv', 'scatter', 'head', 'decode + NMS',
                'letterbox', 'state image', 'other (glue)'} <= set(st), st
        assert sum(st.values()) <= r['step_ms'] * 1.5  # medians of parts vs median of wholes
        assert r['step_over_onnxruntime'] > 0 and r['torch_over_onnxruntime'] > 0
        # op counts measured (a fused layer is one call: a step may use fewer torch ops than
        # the dense pass), and at most one host sync in a step (the head's), none in dense
        assert r['step_ops'] > 0 and r['dense_ops'] > 100 and r['dense_syncs'] == 0
        assert r['step_syncs'] <= 1
        assert 0 < r['miss_fraction'] < 1
        assert r['cache_mb'] > 1 and r['cache_copy_ms'] > 0  # the warp's memory floor
    text = capsys.readouterr().out
    assert 'step / ort' in text and 'Where one incremental step goes' in text
    assert 'Copying every cached map once' in text
    assert bench.render(res) in text
