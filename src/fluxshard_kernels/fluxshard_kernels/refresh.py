"""Background dense refresh of an incremental runner (paper section 4.4): a dense pass on a
shadow executor, preemptible between layers, whose caches replace the runner's when it
completes. Runs on the process's long-lived background executor (``background.shared()``)."""

import threading
from typing import Optional

import numpy as np


class Cancelled(Exception):
    """A background refresh was cancelled between two layers."""


class Refresh:
    """Background dense refresh of an IncrementalYOLO, preemptible between layers.

    ``start(frame)`` submits a dense pass on a shadow executor to the process's long-lived
    background executor (``background.shared()``, one thread for every refresh of the process);
    ``pause()`` makes it stop at the next layer boundary (so the critical path waits at most one
    layer), ``resume()`` continues, ``cancel()`` abandons it (a queued pass never runs). When it
    completes, the runner's caches and state are swapped for the refreshed ones (under the
    runner's lock).
    """

    def __init__(self, runner, executor=None):
        from fluxshard_kernels import background
        self.executor = executor or background.shared()
        self.runner = runner
        self._go = threading.Event()
        self._go.set()
        self._cancel = False
        self._idle = threading.Event()
        self._idle.set()
        self.task = None
        self.completed = 0
        self.cancelled = 0
        self.result = None  # (raw outputs, letterbox) of the last completed dense pass

    def _checkpoint(self):
        self._idle.set()
        self._go.wait()
        self._idle.clear()
        if self._cancel:
            raise Cancelled()

    def start(self, frame: np.ndarray):
        self.cancel()
        r = self.runner
        with r._lock:
            if r.ex is None or r.state is None:  # the first pass: it builds the state
                r._setup(frame.shape)
        self._cancel = False
        self._go.set()
        shadow = r.shadow_executor()
        shadow.checkpoint = self._checkpoint
        img = frame.copy()

        def run(task):
            try:
                self._checkpoint()  # parked here if paused before it was taken
                lb = r.lb
                raw = r._run(img, 'dense', None, r._full(), ex=shadow)
                with r._lock:
                    if r.state is None or img.shape == r.state.shape:
                        r.ex.adopt(shadow.caches)
                        r.state = img
                        self.result = (raw, lb)
                        self.completed += 1
            except Cancelled:
                self.cancelled += 1
            finally:
                self._idle.set()
        self.task = self.executor.submit(run)
        self.task.on_cancel = self._wake  # e.g. the executor's shutdown at exit

    def _wake(self):
        """The task was cancelled from outside: stop at the next checkpoint, even parked."""
        self._cancel = True
        self._go.set()

    def pause(self, timeout: float = 5.0) -> bool:
        """Stop the refresh at its next layer boundary; True once it is parked."""
        self._go.clear()
        return self._idle.wait(timeout)

    def resume(self):
        self._go.set()

    def cancel(self):
        if self.task is not None and not self.task.done:
            self._cancel = True
            self._go.set()
            state = self.task.cancel()
            if state == 'running':  # it stops at its next layer boundary
                self.task.wait()
            elif state == 'queued':  # never ran
                self.cancelled += 1
        self.task = None

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Until the submitted pass has finished (completed or cancelled)."""
        return self.task is None or self.task.wait(timeout)

    @property
    def running(self) -> bool:
        """A pass is submitted and not finished (queued, running or paused)."""
        return self.task is not None and not self.task.done
