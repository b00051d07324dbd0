"""A one-slot "latest wins" holder: callbacks put, one worker takes; overwritten items are
counted as drops (the architecture's latest-frame-wins invariant)."""

import threading
from typing import Any, Optional


class LatestSlot:
    """Thread-safe single slot. ``put`` replaces (and counts) an untaken item."""

    def __init__(self):
        self._cv = threading.Condition()
        self._item = None
        self._has = False
        self._closed = False
        self.dropped = 0
        self.put_count = 0

    def put(self, item: Any) -> Optional[Any]:
        """Store ``item``; return the item it replaced (a dropped frame) or None."""
        with self._cv:
            old = self._item if self._has else None
            if self._has:
                self.dropped += 1
            self._item, self._has = item, True
            self.put_count += 1
            self._cv.notify()
            return old

    def put_if_empty(self, item: Any) -> bool:
        """Store ``item`` only when nothing is waiting (not counted as a new input)."""
        with self._cv:
            if self._has or self._closed:
                return False
            self._item, self._has = item, True
            self._cv.notify()
            return True

    def take(self, timeout: Optional[float] = None) -> Optional[Any]:
        """Wait up to ``timeout`` s for an item; None on timeout or after close()."""
        with self._cv:
            if not self._has and not self._closed:
                self._cv.wait(timeout)
            if not self._has:
                return None
            item, self._item, self._has = self._item, None, False
            return item

    def close(self):
        with self._cv:
            self._closed = True
            self._cv.notify_all()
