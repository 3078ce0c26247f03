"""How many generation jobs the web app takes: `concurrency` run, `queue_size` wait, and any
request beyond that is refused at once with a busy message.

The app counts admissions itself instead of relying on gradio's queue limit: gradio answers a
full queue with a "queue full" message that ends `job.result()` but not the streaming loop
`for update in client.submit(...)`, so a client written that way would wait forever. A
refusal raised inside the endpoint ends the stream like any other error, and the message
reaches both the loop (it stops) and `job.result()` (it raises).

No gradio import here: the gate is plain threading, tested without a server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Busy(RuntimeError):
    """The server already holds as many jobs as it takes. The message is safe to show."""


class Admission:
    """At most `concurrency` jobs inside `admit()` at once and `queue_size` more waiting for
    a turn; `admit()` raises Busy at once for any request beyond those."""

    def __init__(self, concurrency: int, queue_size: int):
        if concurrency < 1 or queue_size < 0:
            raise ValueError(f"need concurrency >= 1 and queue_size >= 0, got {concurrency} and {queue_size}")
        self.concurrency = concurrency
        self.queue_size = queue_size
        self._lock = threading.Lock()
        self._admitted = 0  # running + waiting
        self._running = threading.BoundedSemaphore(concurrency)

    @property
    def admitted(self) -> int:
        """Jobs running or waiting now."""
        with self._lock:
            return self._admitted

    def busy_message(self) -> str:
        return (f"the server is busy: {self.concurrency} job(s) running and {self.queue_size} waiting, "
                "its limit; try again in a moment")

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Take a place (or raise Busy), wait for a turn to run, run the body, give both back."""
        with self._lock:
            if self._admitted >= self.concurrency + self.queue_size:
                raise Busy(self.busy_message())
            self._admitted += 1
        try:
            with self._running:
                yield
        finally:
            with self._lock:
                self._admitted -= 1
