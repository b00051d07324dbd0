"""The server's inference queue (no ROS): one latest-wins slot per edge, served round robin,
so an edge that sends far more than its frame rate gets one job in turn like every other."""

import threading
from typing import Any, Hashable, Iterable, Optional, Tuple


class JobTable:
    """Latest-wins jobs per edge, taken round robin over the edges (thread-safe)."""

    def __init__(self, edges: Iterable[Hashable]):
        self._order = list(edges)
        self._jobs = {}
        self._next = 0
        self._closed = False
        self._cv = threading.Condition()

    def put(self, edge: Hashable, job: Any) -> bool:
        """Queue ``job`` for ``edge``; True when it replaced a job not yet taken."""
        with self._cv:
            replaced = edge in self._jobs
            self._jobs[edge] = job
            self._cv.notify()
            return replaced

    def pending(self) -> int:
        """Jobs waiting (one per edge at most)."""
        with self._cv:
            return len(self._jobs)

    def take(self, timeout: float) -> Optional[Tuple[Hashable, Any]]:
        """The next edge's job in round-robin order after the last one served, waiting up to
        ``timeout`` s; None when there is none (or the table is closed)."""
        with self._cv:
            if not self._jobs and not self._closed:
                self._cv.wait(timeout)
            if not self._jobs or self._closed:
                return None
            n = len(self._order)
            for i in range(n):
                idx = (self._next + i) % n
                edge = self._order[idx]
                if edge in self._jobs:
                    self._next = (idx + 1) % n
                    return edge, self._jobs.pop(edge)
            return None

    def close(self):
        with self._cv:
            self._closed = True
            self._cv.notify_all()
