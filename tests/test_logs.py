"""The batched stderr writer: nothing lost, nothing torn, failures never held back."""

from __future__ import annotations

import io
import logging
import threading
import time

from iir.ops.logs import BatchedStreamHandler


def _logger(handler: logging.Handler, name: str) -> logging.Logger:
    log = logging.getLogger(name)
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def test_warnings_are_written_at_once_with_the_lines_before_them() -> None:
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, interval=3600)  # the timer never fires in this test
    log = _logger(handler, "iir.test.batched.warn")
    log.info("first")
    log.info("second")
    assert stream.getvalue() == ""  # waiting for the next batch
    log.warning("trouble")
    assert stream.getvalue().splitlines() == ["first", "second", "trouble"]
    handler.close()


def test_close_writes_what_is_waiting() -> None:
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, interval=3600)
    log = _logger(handler, "iir.test.batched.close")
    for i in range(5):
        log.info("line %d", i)
    handler.close()
    assert stream.getvalue().splitlines() == [f"line {i}" for i in range(5)]


def test_the_writer_thread_empties_the_queue_on_its_own() -> None:
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, interval=0.01)
    log = _logger(handler, "iir.test.batched.timer")
    log.info("eventually")
    deadline = time.monotonic() + 30  # a generous deadline, not a timing check
    while "eventually" not in stream.getvalue():
        assert time.monotonic() < deadline, "the writer thread never wrote the line"
        time.sleep(0.01)
    handler.close()


def test_a_full_batch_is_written_by_the_logging_thread() -> None:
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, interval=3600, max_lines=3)
    log = _logger(handler, "iir.test.batched.full")
    for i in range(3):
        log.info("n%d", i)
    assert stream.getvalue().splitlines() == ["n0", "n1", "n2"]
    handler.close()


def test_many_threads_lose_and_tear_no_line() -> None:
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, interval=0.001, max_lines=50)
    log = _logger(handler, "iir.test.batched.threads")

    def worker(t: int) -> None:
        for i in range(2000):
            log.info("thread %d line %d", t, i)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handler.close()
    lines = stream.getvalue().splitlines()
    assert sorted(lines) == sorted(f"thread {t} line {i}" for t in range(4) for i in range(2000))
    for t in range(4):  # each thread's lines keep their order
        mine = [ln for ln in lines if ln.startswith(f"thread {t} ")]
        assert mine == [f"thread {t} line {i}" for i in range(2000)]


def test_a_broken_stream_does_not_raise_into_the_caller() -> None:
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, interval=3600)
    log = _logger(handler, "iir.test.batched.broken")
    stream.close()
    log.warning("nowhere to go")  # must not raise
    handler.close()
