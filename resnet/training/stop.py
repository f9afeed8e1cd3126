"""Stopping a training run cleanly on a signal: its MLflow run marked KILLED, its last epoch's
checkpoint kept for the rerun."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Any


class StopSignals:
    """SIGTERM and SIGUSR2 stop training as Ctrl-C does: the run is marked KILLED and the last
    epoch's checkpoint stays for the rerun. The study runner stops cells with SIGTERM (on Ctrl-C, and
    in a Slurm job on the scheduler's warning); Slurm itself may signal every process of a job (TERM
    on cancel or preemption, USR2 as the time-limit warning). Without this the kernel would die with
    its run left RUNNING.

    The first signal stops; later ones are ignored, so that recording the stop is not cut short.
    Between an epoch's metrics going to MLflow and its checkpoint being written (``recording()``)
    the signal waits, so that a resumed run never logs an epoch twice. Signal handlers live in the
    main thread only; elsewhere this does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR2)

    def __init__(self):
        self.recording_epoch = False
        self.pending: str | None = None
        self.stopping = False
        self.received: str | None = None  # the first stop signal, even one that came while stopping
        self.previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.signal(signum, self._stop) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False

    def _stop(self, signum, frame):
        name = f"signal {signal.Signals(signum).name}"
        self.received = self.received or name
        if self.stopping:
            return
        if self.recording_epoch:
            self.pending = name
            return
        self.stopping = True
        raise KeyboardInterrupt(name)

    def signalled_within(self, seconds: float) -> bool:
        """Whether a stop signal has come, or comes within ``seconds``. A data-parallel rank whose
        collective failed asks this: a partner that stopped on the same signal a moment earlier ends the
        collective before the signal reaches this process, and the run was then stopped, not broken."""
        deadline = time.monotonic() + seconds
        while self.received is None and time.monotonic() < deadline:
            time.sleep(0.05)  # a signal cuts the sleep short and its handler notes it
        return self.received is not None

    @contextlib.contextmanager
    def recording(self):
        self.recording_epoch = True
        try:
            yield
        finally:
            self.recording_epoch = False
        if self.pending and not self.stopping:
            self.stopping = True
            raise KeyboardInterrupt(self.pending)
