"""Data-parallel training's plumbing: one process per GPU (gloo processes on a CPU), as torchrun,
submitit's Slurm tasks or this project's own launcher start them. A process that a launcher started
finds its place in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``: torchrun's variables, which ``TorchDistributedEnvironment.export``
sets in each Slurm task too); without them, ``launch`` starts the processes on this machine.

The paper's ImageNet batch is 256 in all, trained on 8 GPUs with 32 images each and BatchNorm
statistics per GPU (no SyncBN): ``check_world`` splits a global batch over the world and refuses
what cannot run, before any process starts. Every collective has a timeout, so one rank's failure
ends the others' wait instead of hanging them; ``launch`` then ends the whole cell with that rank's
error.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..hardware import BACKENDS
from ..settings import ConfigError
from .stop import StopSignals

# Long enough for rank 0's slowest solitary work between collectives (an epoch's checkpoint and its
# MLflow records); short enough that a dead rank ends the cell within minutes, not hours.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)
# The variables torchrun sets for each process (and this module's launcher too).
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int
    size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes to MLflow and checkpoints."""
        return self.rank == 0


def launched_world() -> tuple[int, int] | None:
    """(world size, processes on this node) as a launcher (torchrun, a Slurm job's tasks) set them in
    the environment; None when no launcher started this process."""
    if "WORLD_SIZE" not in os.environ or "MASTER_ADDR" not in os.environ:
        return None
    size = int(os.environ["WORLD_SIZE"])
    return size, int(os.environ.get("LOCAL_WORLD_SIZE", size))


def check_world(world_size: int, backend: str, global_batch: int, visible_gpus: int,
                processes_here: int | None = None) -> tuple[str, int]:
    """The backend to use and the batch of each process, or a ``ConfigError`` naming what is wrong
    and what is legal: a world size the global batch does not divide, NCCL without CUDA, more GPU
    processes on this node (``processes_here``, by default the whole world) than GPUs visible, or a
    launcher's world of another size."""
    if not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"world_size: must be a positive whole number (processes, one per GPU), got {world_size!r}")
    if backend not in BACKENDS:
        raise ConfigError(f"backend: unknown backend {backend!r}; legal values: {', '.join(BACKENDS)}")
    if global_batch % world_size:
        divisors = [n for n in range(1, global_batch + 1) if global_batch % n == 0 and n <= 64]
        raise ConfigError(f"batch_size: the global batch {global_batch} does not split over {world_size} processes; "
                          f"legal world sizes for it: {', '.join(map(str, divisors))}")
    resolved = ("nccl" if visible_gpus else "gloo") if backend == "auto" else backend
    if resolved == "nccl" and not visible_gpus:
        raise ConfigError("backend: nccl needs CUDA GPUs and none is visible here; use gloo (or auto) on a CPU")
    here = world_size if processes_here is None else processes_here
    # A launched task that sees one GPU is bound to its own (Slurm's --gpus-per-task, CUDA_VISIBLE_DEVICES
    # set per task): the node's other tasks see theirs. Two ranks on one GPU NCCL itself refuses at start.
    bound_per_task = processes_here is not None and visible_gpus == 1
    if resolved == "nccl" and here > visible_gpus and not bound_per_task:
        raise ConfigError(f"world_size: {here} GPU processes asked for on this node, but only {visible_gpus} "
                          f"GPU{'s are' if visible_gpus != 1 else ' is'} visible; use at most {visible_gpus}")
    launched = launched_world()
    if launched is not None and launched[0] != world_size:
        raise ConfigError(f"world_size: the launcher started {launched[0]} processes (WORLD_SIZE) but the run asks "
                          f"for {world_size}; start world_size processes, or set world_size={launched[0]}")
    return resolved, global_batch // world_size


def gpu_for_rank(local_rank: int, visible_gpus: int) -> int:
    """The index, among the GPUs this process sees, of the one it trains on: device 0 for a task bound to
    one GPU of its own (it sees only that one), else the GPU of its local rank (every task of the node
    sees all of them: torchrun, Slurm's --gpus-per-node)."""
    if visible_gpus == 1:
        return 0
    if 0 <= local_rank < visible_gpus:
        return local_rank
    raise ConfigError(f"local rank {local_rank} has no GPU: this process sees {visible_gpus} GPUs; start at most "
                      f"{visible_gpus} processes on this node, or bind one GPU to each task")


def join(backend: str, timeout: datetime.timedelta = COLLECTIVE_TIMEOUT) -> World:
    """Join the process group that torchrun (or ``launch``, or a Slurm task) set up in the
    environment; a single process without those variables is a world of one, with no process group."""
    rank, size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if backend == "nccl":
        device = torch.device("cuda", gpu_for_rank(local_rank, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    # Under a launcher a process group always (as torchvision's reference does), even a world of one: a
    # torchrun run on one GPU then takes the same NCCL and DDP path as on eight.
    if (size > 1 or launched_world() is not None) and not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=size, timeout=timeout)
    return World(rank, size, local_rank, backend, device)


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def launch(function: Callable[..., Any], world_size: int, backend: str, *args: Any) -> None:
    """Run ``function(*args)`` in ``world_size`` fresh processes on this machine, joined as one
    process group (the notebook's way to train a cell on several GPUs or CPU processes). Returns
    when all have finished; if one raises, the others are stopped and a ``RuntimeError`` names its
    rank and its error. A stop signal to this process (SIGTERM, SIGUSR2) is passed on to the ranks, which
    record the stop, and then raises ``KeyboardInterrupt`` here."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="resnet-ranks-") as errors, StopSignals():
        context = mp.start_processes(_run_rank, args=(world_size, port, backend, errors, function, args),
                                     nprocs=world_size, join=False, start_method="spawn")
        try:
            while not context.join():
                pass
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as error:
            raise RuntimeError(_first_failure(Path(errors), error, world_size)) from None
        except KeyboardInterrupt:
            _stop_ranks(context.processes)
            raise


# How long the ranks of a stopped cell get to record the stop (rank 0 marks the run KILLED) before they
# are killed: inside the study pool's own patience with a cell (pool.CELL_STOP_SECONDS).
RANK_STOP_SECONDS = 15


def _stop_ranks(processes) -> None:
    """Pass a stop on to the ranks (SIGTERM, which each handles as a stop: ``training.stop``; a rank
    that had it already ignores the second) and wait for them; kill what still runs after
    ``RANK_STOP_SECONDS``."""
    for process in processes:
        if process.is_alive():
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + RANK_STOP_SECONDS
    for process in processes:
        process.join(timeout=max(0.1, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def _first_failure(errors: Path, error: Exception, world_size: int) -> str:
    """The rank whose error came first: when one rank fails, its partners then fail too (a reset
    connection), and torch may notice theirs first."""
    recorded = [json.loads(path.read_text()) for path in errors.glob("rank*.json")]
    if recorded:
        first = min(recorded, key=lambda entry: entry["time"])
        return f"rank {first['rank']} of {world_size} failed: {first['error']}"
    exit_code = getattr(error, "exit_code", None)
    return f"rank {error.error_index} of {world_size} died (exit code {exit_code})"


def _run_rank(rank: int, world_size: int, port: int, backend: str, errors: str, function: Callable[..., Any],
              args) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if backend == "gloo":
        # CPU processes share the cores this process may run on (its affinity: a container's or a
        # scheduler's share, not the whole machine): each its share, not every core each (the default),
        # which oversubscribes them (measured: the tiny profile's epochs took about twice as long).
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // world_size))
    try:
        join(backend)
        function(*args)
    except BaseException as error:
        message = {"time": time.time(), "rank": rank, "error": f"{type(error).__name__}: {error}"}
        Path(errors, f"rank{rank}.json").write_text(json.dumps(message))
        raise
    finally:
        leave()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rank_share(items: list, rank: int, size: int) -> list:
    """The items rank ``rank`` of ``size`` evaluates: every item on exactly one rank, the ranks' counts at most one
    apart (the validation and 10-crop tests sum their hits and counts over the ranks)."""
    return items[rank::size]


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over every process (itself in a world of one)."""
    if dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
    return values
