"""One generation at a time (llama.cpp's MTP context serves one sequence), on one worker thread,
with a bounded queue in front of it.

`Slot.submit(work, loop, streaming)` queues a job, or refuses it with 503 + Retry-After when
`max_queue` jobs already wait. The worker runs `work(job)` (runtime/server/runner.py), which posts
("start",), ("delta", d) ..., then ("done", reply) or ("error", APIError) to the job's mailbox; the
event loop takes them in batches (`Job.next_events`). `cancel(job)` (the client went away) drops a waiting job, or stops a running
one at its next step and, during a long prefill, at the next graph node (the abort flag).
`drain()` (Ctrl-C / SIGTERM) refuses new jobs, fails the waiting ones with 503 and stops the
running one; `close()` then ends the worker.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from qwythos.runtime.server.errors import APIError
from qwythos.runtime.server.runner import Cancelled

log = logging.getLogger("qwythos.serve")

#: Seconds a client is asked to wait when the queue is full (Retry-After).
RETRY_AFTER_S = 5
SHUTTING_DOWN = "the server is shutting down"


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class Job:
    """One request's work and its mailbox back to the event loop.

    The worker posts events; the loop takes all of them at once with `next_events()`. The loop is
    woken only when it waits on an empty mailbox, so a fast generation costs one wake-up per batch
    of tokens, not per token."""

    def __init__(self, work: Callable[[Job], Any], loop: asyncio.AbstractEventLoop, streaming: bool) -> None:
        self.work = work
        self.loop = loop
        self.streaming = streaming
        self._cancel = threading.Event()
        self.why_cancelled: str | None = None  # "disconnect" | "shutdown"
        self._started = False
        self.finished = False  # the "done" or "error" event was posted
        self._lock = threading.Lock()
        self._mail: list[tuple] = []
        self._waiter: asyncio.Future | None = None  # next_events() waits on it
        self._end_waiter: asyncio.Future | None = None  # settle() waits on it

    def _post(self, *event: Any) -> None:
        with self._lock:
            self._mail.append(event)
            woken = [self._waiter]
            self._waiter = None
            if event[0] in ("done", "error"):
                woken.append(self._end_waiter)
                self._end_waiter = None
        for fut in woken:
            if fut is not None:
                try:
                    self.loop.call_soon_threadsafe(_wake, fut)
                except RuntimeError:  # the loop is closed: nobody is listening any more
                    pass

    async def next_events(self) -> list[tuple]:
        """On the loop: every event posted since the last call (waits for at least one)."""
        while True:
            with self._lock:
                if self._mail:
                    mail, self._mail = self._mail, []
                    return mail
                self._waiter = fut = self.loop.create_future()
            await fut

    async def settle(self, seconds: float) -> None:
        """On the loop: wait `seconds` for more events to gather, less when the job ends meanwhile."""
        with self._lock:
            if self.finished:
                return
            self._end_waiter = fut = self.loop.create_future()
        try:
            await asyncio.wait_for(fut, seconds)
        except asyncio.TimeoutError:
            pass

    # -- called by the runner, on the worker thread ---------------------------------------------
    def started(self) -> None:
        if not self._started:
            self._started = True
            self._post("start")

    def delta(self, d: dict) -> None:
        self._post("delta", d)

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def mark_cancelled(self, why: str) -> None:
        """From the slot: the runner stops at its next check."""
        self.why_cancelled = why
        self._cancel.set()

    # -- the end --------------------------------------------------------------------------------
    def done(self, reply: Any) -> None:
        self.finished = True
        self._post("done", reply)

    def fail(self, error: APIError) -> None:
        self.finished = True
        self._post("error", error)


class Slot:
    def __init__(self, backend: Any, max_queue: int) -> None:
        if max_queue < 0:
            raise ValueError("max_queue must be 0 or more")
        self.backend = backend
        self.max_queue = max_queue
        self._cv = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._closing = False
        # finished jobs by outcome: done, cancelled (client gone or shutdown), invalid (a 4xx found
        # while running, e.g. a prompt longer than the context), failed (5xx); refused: queue full
        self.counts = {"done": 0, "cancelled": 0, "invalid": 0, "failed": 0, "refused": 0}
        self._thread = threading.Thread(target=self._loop, name="qwythos-serve-slot", daemon=True)
        self._thread.start()

    # -- the event loop's side ------------------------------------------------------------------
    def submit(self, work: Callable[[Job], Any], loop: asyncio.AbstractEventLoop, streaming: bool) -> Job:
        job = Job(work, loop, streaming)
        with self._cv:
            if self._closing:
                raise APIError(503, SHUTTING_DOWN, None, "shutting_down")
            busy = self._running is not None or self._waiting
            if busy and len(self._waiting) >= self.max_queue:
                self.counts["refused"] += 1
                raise APIError(
                    503,
                    f"the server is busy: one generation runs and {len(self._waiting)} request(s) wait "
                    f"(--max-queue {self.max_queue}); retry later",
                    None,
                    "queue_full",
                    {"Retry-After": str(RETRY_AFTER_S)},
                )
            self._waiting.append(job)
            self._cv.notify()
        return job

    def cancel(self, job: Job, why: str = "disconnect") -> None:
        """Stop `job`: dropped when it waits, stopped at its next step (or graph node) when it runs."""
        with self._cv:
            if job.finished or job.cancelled():
                return
            job.mark_cancelled(why)
            if job in self._waiting:
                self._waiting.remove(job)
                self.counts["cancelled"] += 1
                if why == "shutdown":
                    job.fail(APIError(503, SHUTTING_DOWN, None, "shutting_down"))
            elif self._running is job:
                self.backend.abort()  # only this job decodes now; a later decode clears the flag first

    def status(self) -> dict:
        with self._cv:
            return {"busy": self._running is not None, "queued": len(self._waiting), **self.counts}

    def drain(self) -> None:
        """Refuse new jobs; fail the waiting ones and stop the running one."""
        with self._cv:
            self._closing = True
            jobs = [*self._waiting, *([self._running] if self._running else [])]
        for job in jobs:
            self.cancel(job, "shutdown")

    def alive(self) -> bool:
        """The worker still runs (a generation that did not stop in time)."""
        return self._thread.is_alive()

    def close(self, timeout: float = 30.0) -> None:
        self.drain()
        with self._cv:
            self._cv.notify_all()
        self._thread.join(timeout)

    # -- the worker -----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._closing:
                    self._cv.wait()
                if not self._waiting:
                    return
                job = self._waiting.popleft()
                self._running = job
            outcome = "done"
            try:
                job.done(job.work(job))
            except (Cancelled, KeyboardInterrupt):
                outcome = "cancelled"
                if job.why_cancelled == "disconnect":
                    job.fail(APIError(499, "the client closed the connection", None, "cancelled"))
                else:  # drained, or stopped by Ctrl-C / SIGTERM before the drain reached it
                    job.fail(APIError(503, SHUTTING_DOWN, None, "shutting_down"))
            except APIError as e:
                outcome = "failed" if e.status >= 500 else "invalid"
                job.fail(e)
            except Exception as e:  # a bug: one line in the log, a JSON 500 to the client, the server goes on
                outcome = "failed"
                log.exception("request failed")
                job.fail(APIError(500, f"internal error: {type(e).__name__}", None, "internal_error"))
            with self._cv:
                self._running = None
                self.counts[outcome] += 1
