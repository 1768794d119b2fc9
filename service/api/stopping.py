"""How the service stops: worker processes that stop with their supervisor, and cut-off answers.

uvicorn stops on SIGTERM or SIGINT by closing the port, letting the requests in flight finish
within `timeout_graceful_shutdown` (UNET_SHUTDOWN_GRACE_S) and then cancelling the rest, which
it would answer with a plain-text 500; `CutOffAnswers` answers them with a 503 problem instead.

Worker processes (`UNET_WORKERS`) run under uvicorn's supervisor, which has two gaps. Its workers
outlive it: SIGKILL the supervisor and they go on serving, re-parented to PID 1, holding the port.
And on SIGTERM it keeps its copy of the listening socket open until every worker has drained, so
the kernel goes on accepting connections that nobody will answer. Here each worker stops itself
(SIGTERM: close the port, drain, exit) once its supervisor is gone, and the supervisor closes its
copy of the port and tells the workers to stop the moment a stop signal arrives.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import threading
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Scope
from uvicorn.supervisors.multiprocess import Multiprocess

from service.api.problems import AnswerUnstarted, problem_response

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How long a worker may take to answer the supervisor's liveness ping before it is killed as
# hung. uvicorn's 5 s is shorter than a worker's imports take on a loaded machine, and a worker
# killed while starting is replaced by one that is killed in its turn.
HEALTHCHECK_S = 30
# After the grace period, how long a worker whose supervisor died may take to finish its own
# shutdown (lifespan: engine, jobs, store) before it is ended without it.
EXIT_MARGIN_S = 10.0


class WorkerConfig(uvicorn.Config):
    """uvicorn's settings, pickled into each worker; loading them there starts the parent watch."""

    def __init__(self, app: str, **options: Any) -> None:
        options.setdefault("timeout_worker_healthcheck", HEALTHCHECK_S)
        super().__init__(app, **options)

    def load(self) -> None:
        """Load the app, after arranging to stop when the supervisor is gone."""
        follow_parent(self.timeout_graceful_shutdown)
        super().load()
        self.loaded_app = CutOffAnswers(self.loaded_app)


class CutOffAnswers(AnswerUnstarted):
    """Answers a request cancelled before it answered with a 503 problem, not uvicorn's 500.

    What cancels a whole request here is uvicorn, at the end of a shutdown's grace period: the
    app's own cancellation of a request whose client left stays inside it (CancelOnDisconnect),
    and a send to a client that has gone is dropped anyway. The task ends here either way;
    answering is all that is left to do.
    """

    catches = (asyncio.CancelledError,)

    def answer(self, scope: Scope) -> ASGIApp:
        """A 503 problem that asks for a retry."""
        return problem_response(
            503,
            "Service unavailable",
            "the server stopped before this request finished (UNET_SHUTDOWN_GRACE_S); retry",
            slug="shutting-down",
            instance=scope["path"],
            headers={"Retry-After": "1", "Connection": "close"},
        )


class Supervisor(Multiprocess):
    """uvicorn's process supervisor, closing the port at once when told to stop."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        self.stopping = False
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._stop)

    def keep_subprocess_alive(self) -> None:
        """Replace dead workers, unless stopping: a worker that has drained is not replaced."""
        if not self.stopping:
            super().keep_subprocess_alive()

    def _stop(self, sig: int, frame: FrameType | None) -> None:
        """Close this process's copy of the port and stop the workers, then exit as uvicorn does.

        A signal handler: only system calls and a list append, no locks (the main loop may hold
        one). Each worker closes its own copy of the port on SIGTERM; once all are closed, new
        connections are refused.
        """
        self.stopping = True
        for sock in self.sockets:
            sock.close()
        for process in self.processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGTERM)
        self.signal_queue.append(sig)


def supervise(config: WorkerConfig) -> None:
    """Bind the port and run `config.workers` worker processes on it until stopped."""
    sock = config.bind_socket()
    try:
        Supervisor(config, sockets=[sock]).run()
    finally:
        sock.close()


def follow_parent(grace_s: float | None) -> None:
    """In a worker process: stop like on SIGTERM once the parent process is gone.

    The parent's end of multiprocessing's spawn pipe closes when it dies, however it dies
    (SIGKILL included), so a thread waiting on it learns of the death at once; nothing happens
    in a process that multiprocessing did not start.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    deadline_s = (grace_s or 0) + EXIT_MARGIN_S
    threading.Thread(
        target=_stop_when_gone, args=(parent, deadline_s), name="parent-watch", daemon=True
    ).start()


def _stop_when_gone(parent: multiprocessing.process.BaseProcess, deadline_s: float) -> None:
    parent.join()
    log.warning("the supervisor process is gone: closing the port and stopping")
    os.kill(os.getpid(), signal.SIGTERM)
    # The graceful stop needs the event loop; a loop that is stuck would keep the port.
    threading.Event().wait(deadline_s)
    log.error("still running %.0f s after the supervisor died: exiting now", deadline_s)
    os._exit(1)
