"""Prepare the next batches on a background thread while the device computes.

The training step is dispatched asynchronously, so host-side work (reading, tokenizing,
packing) can overlap it; without this the step waits for the packer every time. The
iterator state is captured together with each batch, so `get_state()` describes the
batches *consumed*, not the ones already prepared: a checkpoint taken at step N resumes
with batch N + 1 exactly as an unprefetched run would.
"""

from __future__ import annotations

import queue
import threading

_DONE = object()


class Prefetch:
    """Wrap a grain DatasetIterator (next, get_state, set_state) with `depth` batches ahead."""

    def __init__(self, iterator, depth: int = 2):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._it, self._depth = iterator, depth
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._state = iterator.get_state()
        self._thread: threading.Thread | None = None

    def set_state(self, state):
        """Only before the first batch: the producer starts on the first `next`."""
        if self._thread is not None:
            raise RuntimeError("set_state after iteration started; restore before the first batch")
        self._it.set_state(state)
        self._state = state

    def get_state(self):
        return self._state

    def _produce(self):
        try:
            while not self._stop.is_set():
                try:
                    item = (next(self._it), self._it.get_state())
                except StopIteration:
                    item = _DONE
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if item is _DONE:
                    return
        except BaseException as error:  # noqa: BLE001 - re-raised in the consumer
            self._queue.put(error)

    def __iter__(self):
        return self

    def __next__(self):
        if self._thread is None:
            self._queue = queue.Queue(maxsize=self._depth)
            self._thread = threading.Thread(target=self._produce, daemon=True, name="prefetch")
            self._thread.start()
        item = self._queue.get()
        if item is _DONE:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        batch, self._state = item
        return batch

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
