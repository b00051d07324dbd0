"""One long-lived background executor per process (the design's "background updates in
separate executors"): a single worker thread runs background tasks (dense cache refreshes) in
submission order, beside the critical path, each with a cancel token. Tasks cooperate: a
refresh yields at layer boundaries (``incremental.Refresh``) so the critical path never waits
for more than one layer."""

import queue
import threading
from typing import Callable, Optional


class Task:
    """A submitted background task: ``cancel()`` (a queued task never runs; a running one sees
    ``cancelled`` at its next checkpoint), ``wait()``, ``done``."""

    def __init__(self, fn: Callable[['Task'], None]):
        self.fn = fn
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.cancelled = False
        self.started = False
        #: called once on cancel (a task parked at a checkpoint is woken by it)
        self.on_cancel: Optional[Callable[[], None]] = None

    def cancel(self) -> str:
        """Cancel: 'queued' (it will never run), 'running' (it stops at its next checkpoint;
        the caller may wait) or 'done' (too late)."""
        with self._lock:
            first = not self.cancelled
            self.cancelled = True
            if not self.started:
                state = 'queued'
            else:
                state = 'done' if self._done.is_set() else 'running'
        if first and state == 'running' and self.on_cancel is not None:
            self.on_cancel()
        return state

    def _begin(self) -> bool:
        with self._lock:
            if self.cancelled:
                self._done.set()
                return False
            self.started = True
            return True

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._done.wait(timeout)


class BackgroundExecutor:
    """A single daemon thread taking tasks from a queue (started on first submit)."""

    def __init__(self, name: str = 'fluxshard-background'):
        self.name = name
        self._queue = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self.completed = 0
        self._current: Optional[Task] = None
        self._pending = []

    def submit(self, fn: Callable[[Task], None]) -> Task:
        task = Task(fn)
        with self._lock:
            self._pending.append(task)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self.name,
                                                daemon=True)
                self._thread.start()
        self._queue.put(task)
        return task

    def shutdown(self, timeout: float = 10.0):
        """Cancel every queued and running task and wait (up to ``timeout``) for the running
        one to stop at its checkpoint: at interpreter exit, a task left inside a torch op
        while the runtime tears down would abort the process."""
        with self._lock:
            tasks, self._pending = list(self._pending), []
            if self._current is not None:
                tasks.append(self._current)
        for t in tasks:
            t.cancel()
        for t in tasks:
            if t.started:
                t.wait(timeout)

    def _loop(self):
        while True:
            task = self._queue.get()
            with self._lock:
                if task in self._pending:
                    self._pending.remove(task)
                self._current = task
            if not task._begin():
                continue
            try:
                task.fn(task)
            except Exception:  # noqa: B902 - a failed background task must not stop the rest
                pass
            finally:
                self.completed += 1
                with self._lock:
                    self._current = None
                task._done.set()


_SHARED: Optional[BackgroundExecutor] = None
_SHARED_LOCK = threading.Lock()


def shared() -> BackgroundExecutor:
    """The process's background executor."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            import atexit
            _SHARED = BackgroundExecutor()
            atexit.register(_SHARED.shutdown)
        return _SHARED
