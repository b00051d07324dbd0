"""The long-lived background executor: one thread for every task of the process, in order,
with a cancel token (a queued task never runs; a running one sees the token)."""

import threading

from fluxshard_kernels.background import BackgroundExecutor


def test_tasks_run_in_order_on_one_long_lived_thread_and_cancel_tokens_hold():
    ex = BackgroundExecutor('test-bg')
    names, gate = [], threading.Event()

    def blocker(task):
        names.append(threading.current_thread().name)
        gate.wait(10)
        names.append('saw cancel' if task.cancelled else 'not cancelled')

    first = ex.submit(blocker)
    queued = ex.submit(lambda task: names.append('must not run'))
    later = ex.submit(lambda task: names.append(threading.current_thread().name))
    assert queued.cancel() == 'queued'
    assert first.cancel() in ('running', 'queued')
    gate.set()
    assert later.wait(10) and queued.wait(10) and first.done
    assert 'must not run' not in names
    threads = {n for n in names if n.startswith('test-bg')}
    assert threads == {'test-bg'}  # the same thread ran them all
    assert later.cancel() == 'done'
    ex.submit(lambda task: 1 / 0).wait(10)  # a failing task does not stop the executor
    assert ex.submit(lambda task: None).wait(10)
