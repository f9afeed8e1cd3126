"""Data-parallel training on the CPU: two gloo processes, as the tiny ImageNet profile runs a cell."""

import time

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from resnet.settings import ConfigError
from resnet.training.distributed import check_world, gpu_for_rank, join, launch, launched_world
from resnet.training.engine import SGD

STEPS, BATCH = 3, 8  # the global batch: 4 images on each of two ranks


def _network():
    torch.manual_seed(0)
    # No BatchNorm: with it each rank normalises its own 4 images (the paper's per-GPU statistics) and
    # the two-process run would rightly differ from one process on all 8.
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 5))


def _data():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(STEPS * BATCH, 3, 6, 6, generator=generator), torch.randint(0, 5, (STEPS * BATCH,),
                                                                                  generator=generator)


def _train(model, images, labels, indices_per_step):
    optimizer = SGD(model.parameters(), torch.tensor(0.1), momentum=0.9, weight_decay=1e-4)
    for indices in indices_per_step:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images[indices]), labels[indices]).backward()
        optimizer.step()
    return model


def train_on_my_shard(folder):
    """Run in each of the two processes: DDP over the rank's half of every global batch."""
    rank, world = dist.get_rank(), dist.get_world_size()
    images, labels = _data()
    sampler = DistributedSampler(range(len(labels)), num_replicas=world, rank=rank, shuffle=False)
    mine = list(sampler)
    steps = [mine[step * BATCH // world:(step + 1) * BATCH // world] for step in range(STEPS)]
    model = torch.nn.parallel.DistributedDataParallel(_network())
    _train(model, images, labels, steps)
    torch.save(model.module.state_dict(), f"{folder}/rank{rank}.pt")


def fail_on_rank_one(folder):
    if dist.get_rank() == 1:
        raise ValueError("image n0000/broken.JPEG does not decode")
    dist.barrier()  # rank 0 waits for a partner that will never come


def test_two_gloo_processes_end_with_identical_weights_equal_to_one_process_on_the_whole_batch(tmp_path):
    launch(train_on_my_shard, 2, "gloo", str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert all(torch.equal(ranks[0][key], ranks[1][key]) for key in ranks[0])
    images, labels = _data()
    # DistributedSampler without shuffling deals index i to rank i % 2: the union of the ranks' halves
    # of each step is that step's global batch, and DDP's gradient is the mean over it.
    order = [list(range(rank, STEPS * BATCH, 2)) for rank in (0, 1)]
    steps = [order[0][s * 4:(s + 1) * 4] + order[1][s * 4:(s + 1) * 4] for s in range(STEPS)]
    alone = _train(_network(), images, labels, steps).state_dict()
    initial = _network().state_dict()
    for key in alone:
        torch.testing.assert_close(ranks[0][key], alone[key], rtol=1e-5, atol=1e-6)
        assert not torch.equal(ranks[0][key], initial[key])


def test_one_ranks_failure_ends_the_cell_with_its_rank_and_error_not_a_hang(tmp_path):
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"rank 1 of 2 failed: ValueError: image n0000/broken.JPEG does not decode"):
        launch(fail_on_rank_one, 2, "gloo", str(tmp_path))
    assert time.monotonic() - started < 60


def test_the_ranks_shards_partition_each_epoch_and_reshuffle_with_it():
    count = 10
    samplers = [DistributedSampler(range(count), num_replicas=2, rank=rank, shuffle=True, seed=3) for rank in (0, 1)]
    seen = []
    for epoch in (0, 1):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        shards = [list(sampler) for sampler in samplers]
        assert sorted(shards[0] + shards[1]) == list(range(count)) and len(shards[0]) == len(shards[1]) == 5
        seen.append(shards)
    assert seen[0] != seen[1]


@pytest.mark.parametrize("arguments, message", [
    ((3, "gloo", 256, 0), "the global batch 256 does not split over 3 processes; legal world sizes for it: "
                          "1, 2, 4, 8, 16, 32, 64"),
    ((2, "nccl", 256, 0), "nccl needs CUDA GPUs and none is visible here; use gloo"),
    ((8, "nccl", 256, 4), "8 GPU processes asked for on this node, but only 4 GPUs are visible; use at most 4"),
    ((2, "mpi", 256, 0), "unknown backend 'mpi'; legal values: auto, nccl, gloo"),
    ((0, "gloo", 256, 0), "world_size: must be a positive whole number"),
])
def test_a_world_that_cannot_run_is_refused_before_any_process_starts(arguments, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_world(*arguments)


def test_the_paper_world_splits_256_into_8_gpus_of_32():
    assert check_world(8, "auto", 256, 8) == ("nccl", 32)
    assert check_world(2, "auto", 256, 0) == ("gloo", 128)


def test_a_launchers_world_is_checked_per_node_and_must_be_the_runs(monkeypatch):
    """Under torchrun or a Slurm job's tasks: 2 nodes of 4 GPUs hold the paper's 8 x 32; a launcher
    that started another number of processes than the run asks for is refused."""
    monkeypatch.setenv("MASTER_ADDR", "node-1")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert launched_world() == (8, 4)
    assert check_world(8, "nccl", 256, 4, processes_here=4) == ("nccl", 32)
    with pytest.raises(ConfigError, match="the launcher started 8 processes \\(WORLD_SIZE\\) but the run asks for 4"):
        check_world(4, "gloo", 256, 0)
    monkeypatch.delenv("MASTER_ADDR")
    assert launched_world() is None


SLURM_TASK = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "node-1",
              "MASTER_PORT": "29500", "SLURM_PROCID": "5", "SLURM_LOCALID": "1"}


@pytest.mark.parametrize("binding, visible, device", [
    ({"SLURM_GPUS_PER_TASK": "1", "CUDA_VISIBLE_DEVICES": "1"}, 1, 0),  # --gpus-per-task: sees its own GPU alone
    ({"SLURM_GPUS_PER_NODE": "4", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, 4, 1),  # --gpus-per-node: sees all four
])
def test_a_slurm_task_trains_on_its_own_gpu_under_either_binding(monkeypatch, binding, visible, device):
    """Rank 5 of 8, the second of 4 tasks on its node (what a Slurm task's environment says)."""
    for key, value in {**SLURM_TASK, **binding}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(dist, "init_process_group", lambda *args, **kwargs: None)
    assert check_world(8, "nccl", 256, visible, processes_here=launched_world()[1]) == ("nccl", 32)
    world = join("nccl")
    assert (world.rank, world.size, world.local_rank) == (5, 8, 1)
    assert world.device == torch.device("cuda", device) and chosen == [world.device]


def test_a_node_with_fewer_gpus_than_its_tasks_is_refused_under_a_shared_binding():
    with pytest.raises(ConfigError, match="4 GPU processes asked for on this node, but only 2 GPUs are visible"):
        check_world(8, "nccl", 256, 2, processes_here=4)
    with pytest.raises(ConfigError, match="local rank 3 has no GPU: this process sees 2 GPUs"):
        gpu_for_rank(3, 2)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_each_validation_image_is_tested_by_exactly_one_rank_and_the_ranks_counts_differ_by_at_most_one(size):
    """The validation and 10-crop tests sum hits and image counts over the ranks: each of the 10 images once."""
    from resnet.training.distributed import rank_share

    items = [(f"image{index}.JPEG", index % 3) for index in range(10)]
    shares = [rank_share(items, rank, size) for rank in range(size)]
    assert sorted(item for share in shares for item in share) == sorted(items)
    assert {len(share) for share in shares} <= {10 // size, 10 // size + 1}
    assert sum(len(share) for share in shares) == 10
