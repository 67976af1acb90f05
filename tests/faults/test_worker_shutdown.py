"""`docker stop` sends SIGTERM and, 10 seconds later, SIGKILL: the worker must stop in time."""

from __future__ import annotations

import signal

from tests.faults.conftest import Harness

DOCKER_STOP_GRACE_SECONDS = 10


async def test_sigterm_stops_the_worker_within_the_docker_grace_period(faults: Harness) -> None:
    worker = await faults.workers.start()
    try:
        code = worker.terminate(DOCKER_STOP_GRACE_SECONDS)
    finally:
        if worker.process is not None and worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait(10)
    assert code == 0, f"still running {DOCKER_STOP_GRACE_SECONDS}s after SIGTERM"


async def test_sigint_stops_the_worker_cleanly(faults: Harness) -> None:
    worker = await faults.workers.start()
    worker.stop()
    assert worker.process is not None
    code, output = worker.process.returncode, worker.output()
    assert code != -signal.SIGKILL, "still running 15s after Ctrl-C"
    assert code == 0, output
