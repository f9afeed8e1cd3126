"""``python -m resnet.studies.papermill_cell <papermill arguments>``: papermill for one study cell, deaf to
SIGTERM and SIGUSR2.

Slurm signals every process of a job (TERM on cancel or preemption, USR2 as the time-limit warning)
and papermill would die at once, its kernel then shutting itself down a second later, before it
has recorded the stop in MLflow. So papermill ignores both and waits for its kernel, which handles
them (``training.stop.StopSignals``: the run is marked KILLED, its last epoch checkpointed); the kernel
driver puts SIGTERM back to its default when it starts (``studies.notebook``). The study runner
stops a cell by signalling its kernel (``pool.CellPool.stop``).

Nothing heavy is imported here: this starts once per cell.
"""

import signal
import sys


def main() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    from papermill.cli import papermill

    papermill(prog_name="papermill")


if __name__ == "__main__":
    sys.exit(main())
