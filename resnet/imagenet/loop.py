"""Train one ImageNet cell data-parallel, the paper's way (section 3.4, ``imagenet.config``): one
process per GPU (gloo processes on a CPU), each with its shard of every global batch and its own
BatchNorm statistics, gradients averaged by DistributedDataParallel.

Iterations are counted per global batch, as the paper counts them. Only rank 0 writes: one MLflow run
per cell whatever the world size (the world size, global and per-process batch among its
parameters), and a checkpoint after every epoch, from which a killed or preempted cell resumes into
the same run. Validation every epoch on the centre view (Figure 4's bold curves); at the end the
10-crop top-1 and top-5 errors (Tables 2 and 3). Every rank evaluates its share of the validation
images and the counts are summed.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from ..hardware import processor_description
from ..measures import count_multiply_adds, count_parameters
from ..models import build_model
from ..paths import atomic_write_bytes, runs_dir
from ..settings import ConfigError, DataError
from ..tracking import keys, store
from ..training.distributed import World, check_world, join, launch, launched_world, leave, rank_share, sum_over_ranks
from ..training.engine import SGD, Precision, StepMetrics
from ..training.stop import StopSignals
from .config import ImageNetConfig
from .data import open_imagenet
from .input import (
    DECODER,
    NORMALISATION,
    ImageNetImages,
    ViewSizes,
    centre_view,
    lighting,
    loader,
    prepare_device,
    shared_mean_image,
    ten_crop_scores,
    ten_crop_views,
    top_hits,
    training_view,
)


def train_imagenet(config: ImageNetConfig, *, tracking_uri: str | None = None, parent_run_id: str | None = None,
                   checkpoint_dir: str | Path | None = None) -> str | None:
    """Train ``config`` to the end (resuming its checkpoint if there is one) in ``world_size``
    processes; the MLflow run's id. Started by a launcher (torchrun, a Slurm job's tasks), this process
    is one rank of them (only rank 0 speaks to MLflow; the others return None); else it starts them
    here. The world and the data are checked before any training starts."""
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    launched = launched_world()  # torchrun or a Slurm job's tasks started this process as one rank
    backend, _ = check_world(config.world_size, config.backend, config.batch_size, visible,
                             launched[1] if launched else None)
    config = config.resolved_for("cuda" if backend == "nccl" else "cpu")
    data = open_imagenet(config.data)  # a DATA that cannot be read fails here, in one process
    validation_images = len(_per_class(data.val, config.val_subset))
    if validation_images < config.world_size:
        # Each rank validates its own share: an empty share would leave its collectives out of step.
        raise ConfigError(f"val_subset: {validation_images} validation images for {config.world_size} processes; "
                          f"each process validates a share of them and needs at least one: use at most "
                          f"{validation_images} processes, or more validation images")
    main_rank = launched is None or int(os.environ.get("RANK", 0)) == 0
    uri = store.prepare_store(tracking_uri) if main_rank else store.resolve_tracking_uri(tracking_uri)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else runs_dir() / config.study / "checkpoints"
    job = _Cell(config, uri, parent_run_id, str(folder / f"{config.run_name}-{config.fingerprint()}.pt"), backend)
    if config.world_size == 1 or launched:
        join(backend)
        try:
            job()
        finally:
            leave()
        if not main_rank:
            return None
    else:
        try:
            launch(job, config.world_size, backend)
        except RuntimeError as error:
            # Rank 0 recorded its own end, often a partner's reset connection: record the first failure. A
            # stop that reached the ranks before this process stays a stop (rank 0 marked the run KILLED).
            experiment = store.experiment_id(config.study, uri)
            for run in store.find_runs(experiment, uri, **{keys.FINGERPRINT_TAG: config.fingerprint()})[:1]:
                if run.info.status == keys.STATUS_KILLED:
                    raise KeyboardInterrupt(run.data.tags.get(keys.FAILURE_REASON_TAG, "stopped")) from None
                if run.info.status != keys.STATUS_FINISHED:
                    store.end_run(store.client(uri), run.info.run_id, keys.STATUS_FAILED, str(error))
            raise
    experiment = store.experiment_id(config.study, uri)
    return store.find_runs(experiment, uri, **{keys.FINGERPRINT_TAG: config.fingerprint()})[0].info.run_id


@dataclass
class _State:
    """What a checkpoint holds besides the weights: where the run is."""

    history: list[dict[str, float]] = field(default_factory=list)
    step: int = 0
    run_id: str | None = None


@dataclass
class _Cell:
    """One rank's part of a cell; picklable, so that ``launch`` can start it in fresh processes."""

    config: ImageNetConfig
    uri: str
    parent_run_id: str | None
    checkpoint: str
    backend: str

    def __call__(self) -> None:
        _Training(self, _world(self.backend)).run()


def _world(backend: str) -> World:
    rank, size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return World(rank, size, device.index or 0, backend, device)


class _Training:
    def __init__(self, cell: _Cell, world: World):
        config = self.config = cell.config
        self.cell, self.world = cell, world
        self.data = open_imagenet(config.data)
        self.sizes = ViewSizes(config.crop, config.scale_min, config.scale_max, config.test_size)
        self.train_items = _per_class(self.data.train, config.train_subset)
        self.val_items = _per_class(self.data.val, config.val_subset)
        self.per_rank = config.batch_size // world.size
        prepare_device(world.device)
        self.precision = Precision.for_device(config.precision, world.device)
        torch.manual_seed(config.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
        network = self.precision.place_model(build_model(config.model, shortcut=config.shortcut, stem="imagenet",
                                                         num_classes=len(self.data.classes)))
        self.description = {"parameters": count_parameters(network), "multiply_adds": count_multiply_adds(
            network, image_size=config.crop)}
        self.network = network  # the model itself, for the checkpoint and the 10-crop test
        self.model = DistributedDataParallel(network) if dist.is_initialized() else network  # a launcher's world
        self.lr = torch.tensor(config.lr_at_epoch(1), device=world.device)
        self.optimizer = SGD(self.model.parameters(), self.lr, config.momentum, config.weight_decay)
        # Computed once per cell: rank 0 decodes the sample (or reads it back on a resume), every rank gets it.
        self.mean_image_file = Path(cell.checkpoint).with_suffix(".mean-image.pt")
        self.normalise = shared_mean_image(self.train_items, min(config.mean_images, len(self.train_items)),
                                           self.sizes, config.workers, self.mean_image_file, world)
        self.generator = torch.Generator(device=world.device)  # the colour draws: seeded per epoch and rank
        self.train_set = ImageNetImages(self.train_items, training_view, seed=config.seed, sizes=self.sizes)
        self.sampler = DistributedSampler(self.train_set, num_replicas=world.size, rank=world.rank, shuffle=True,
                                          seed=config.seed, drop_last=True)
        self.loader = loader(self.train_set, self.per_rank, config.workers, world.device, sampler=self.sampler,
                             drop_last=True)
        # Built once: with workers, they stay up between epochs rather than starting anew for each check.
        self.validation_loader = loader(ImageNetImages(self._mine(self.val_items), centre_view, sizes=self.sizes),
                                        self.per_rank, config.workers, world.device, keep_workers=True)
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch < 1:
            raise ConfigError(f"batch_size: the global batch {config.batch_size} is larger than the "
                              f"{len(self.train_items)} training images")
        self.record = StepMetrics(world.device, window=self.steps_per_epoch)

    # ------------------------------------------------------------------------------------------
    def run(self) -> None:
        state = self._restore()
        self._check_same_start(state)
        client = store.client(self.cell.uri) if self.world.is_main else None
        if self.world.is_main:
            state.run_id = store.reopen_run(client, state.run_id) if state.run_id else None
            if state.run_id is None:
                state.run_id = self._create_run(client)
                store.log_metrics(client, state.run_id, state.history)
        # As the CIFAR loop: a stop signal (the pool's SIGTERM, Slurm's warning) stops the rank as Ctrl-C
        # does, but waits while an epoch is being recorded, so that a resume never logs an epoch twice.
        with StopSignals() as signals:
            try:
                for epoch in range(len(state.history) + 1, self.config.epochs + 1):
                    metrics = self._epoch(epoch, state)
                    with signals.recording():
                        state.history.append(metrics)
                        if self.world.is_main:
                            store.log_metrics(client, state.run_id, [metrics])
                            self._save(state)
                    if self.world.is_main:
                        print(f"{self.config.run_name} epoch {epoch:>3}/{self.config.epochs}  train_error "
                              f"{metrics['train_error']:6.2f}%  val_error {metrics['val_error']:6.2f}%  "
                              f"lr {metrics['lr']:.4g}  {metrics['images_per_second']:,.0f} img/s", flush=True)
                final = self._ten_crop()
            except BaseException as error:
                signals.stopping = True  # from here a signal is noted, not raised: the end is being recorded
                if self.world.is_main:
                    self._record_end(client, state, error, signals)
                raise
        if self.world.is_main:
            store.log_metrics(client, state.run_id, [{"epoch": state.history[-1]["epoch"], **final}])
            store.log_files(client, state.run_id, {"config.json": json.dumps(self.config.to_dict(), indent=2).encode()})
            client.set_terminated(state.run_id, keys.STATUS_FINISHED)
            Path(self.cell.checkpoint).unlink(missing_ok=True)
            self.mean_image_file.unlink(missing_ok=True)

    def _record_end(self, client, state: _State, error: BaseException, signals: StopSignals) -> None:
        """KILLED for a stop, FAILED for anything else. A partner rank that stopped on the same signal
        may end this rank's collective first: an error here within a moment of a signal is the stop."""
        partner_stopped = (self.world.size > 1 and isinstance(error, Exception)
                           and signals.signalled_within(STOP_GRACE_SECONDS))
        if isinstance(error, KeyboardInterrupt) or partner_stopped:
            why = error if isinstance(error, KeyboardInterrupt) and str(error) else signals.received or "Ctrl-C"
            store.end_run(client, state.run_id, keys.STATUS_KILLED,
                          f"interrupted ({why}); rerun to resume from the last epoch")
        else:
            store.end_run(client, state.run_id, keys.STATUS_FAILED, f"{type(error).__name__}: {error}")

    def _epoch(self, epoch: int, state: _State) -> dict[str, float]:
        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        self.lr.fill_(self.config.lr_at_epoch(epoch))
        # A resumed run draws what the uninterrupted one would have: the colour shifts follow (seed,
        # epoch, rank), the crops (seed, epoch, image) and the order (seed, epoch).
        self.generator.manual_seed((self.config.seed * 1_000_003 + epoch) * 1009 + self.world.rank)
        self.record.reset_epoch()
        self.model.train()
        started = time.perf_counter()
        for images, labels in self.loader:
            labels = labels.to(self.world.device, non_blocking=True)  # from pinned memory on a GPU
            inputs = self.normalise(images.to(self.world.device, non_blocking=True), torch.float32)
            inputs = self.precision.layout(lighting(inputs, self.normalise, self.generator).to(
                self.precision.input_dtype))
            self.optimizer.zero_grad()
            with self.precision.autocast():
                logits = self.model(inputs)
                loss = F.cross_entropy(logits, labels)
            loss.backward()
            self.optimizer.step()
            self.record.add(loss, logits, labels)
            state.step += 1  # one global batch: the paper's iteration
        loss_sum, errors = sum_over_ranks(torch.stack([self.record.loss_sum, self.record.error_count.float()])).tolist()
        seconds = time.perf_counter() - started
        images = self.steps_per_epoch * self.config.batch_size
        val_loss, val_top1, val_top5 = self._validate()
        return {"epoch": epoch, "step": state.step, "train_error": 100.0 * errors / images,
                "train_loss": loss_sum / images, "val_error": val_top1, "val_top5_error": val_top5,
                "val_loss": val_loss, "lr": float(self.lr), "epoch_seconds": seconds,
                "images_per_second": images / seconds}

    def _mine(self, items):
        return rank_share(items, self.world.rank, self.world.size)

    @torch.no_grad()
    def _validate(self) -> tuple[float, float, float]:
        self.model.eval()
        totals = torch.zeros(4, device=self.world.device, dtype=torch.float64)  # loss, top-1 and top-5 hits, images
        for images, labels in self.validation_loader:
            labels = labels.to(self.world.device, non_blocking=True)
            inputs = self.precision.layout(self.normalise(images.to(self.world.device, non_blocking=True),
                                                          self.precision.input_dtype))
            with self.precision.autocast():
                logits = self.model(inputs).float()
            loss = F.cross_entropy(logits, labels, reduction="sum").double().view(1)
            totals += torch.cat([loss, top_hits(logits, labels), totals.new_tensor([len(labels)])])
        self.model.train()
        loss, top1, top5, count = sum_over_ranks(totals).tolist()
        return loss / count, 100.0 * (1 - top1 / count), 100.0 * (1 - top5 / count)

    def _ten_crop(self) -> dict[str, float]:
        """Tables 2 and 3: top-1 and top-5 error of the 10-crop test over every validation image."""
        view = ImageNetImages(self._mine(self.val_items), ten_crop_views, sizes=self.sizes)
        hits = torch.zeros(3, device=self.world.device, dtype=torch.float64)  # top-1 and top-5 hits, images
        for crops, labels in loader(view, max(1, self.per_rank // 10), self.config.workers, self.world.device):
            scores = ten_crop_scores(self.network, crops, self.normalise, self.precision)
            hits += torch.cat([top_hits(scores, labels), hits.new_tensor([len(labels)])])
        top1, top5, count = sum_over_ranks(hits).tolist()
        return {"final_top1_error_10crop": 100.0 * (1 - top1 / count),
                "final_top5_error_10crop": 100.0 * (1 - top5 / count)}

    # ------------------------------------------------------------------------------------------
    def _restore(self) -> _State:
        path = Path(self.cell.checkpoint)
        if not path.is_file():
            return _State()
        saved = torch.load(path, map_location=self.world.device, weights_only=False)
        self.network.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.world.is_main:
            print(f"resuming {self.config.run_name} at epoch {len(saved['history']) + 1}/{self.config.epochs} "
                  f"(MLflow run {saved['run_id']})", flush=True)
        return _State(saved["history"], saved["step"], saved["run_id"])

    def _check_same_start(self, state: _State) -> None:
        """Every rank must start where rank 0 does: the same epochs done and the same weights. A rank that
        found no checkpoint (a runs folder local to its node) would otherwise train other epochs than its
        partners, and their collectives would wait for each other until the timeout."""
        if self.world.size == 1:
            return
        checksum = torch.stack([p.detach().double().sum() for p in self.network.parameters()]).sum()
        mine = torch.stack([checksum.new_tensor(float(len(state.history))), checksum])  # on the device, no sync
        everyone = [torch.zeros_like(mine) for _ in range(self.world.size)]
        dist.all_gather(everyone, mine)
        first = everyone[0].tolist()
        for rank, (epochs, weights) in enumerate(value.tolist() for value in everyone):
            if (epochs, weights) != tuple(first):
                raise RuntimeError(
                    f"rank {rank} of {self.world.size} restored {int(epochs)} epochs (parameter checksum "
                    f"{weights:.9g}) where rank 0 restored {int(first[0])} (checksum {first[1]:.9g}): every rank "
                    f"must read the same checkpoint, {self.cell.checkpoint}; on several nodes, put the runs folder "
                    "where every "
                    "node reaches it (--runs-dir, RESNET_RUNS_DIR)")

    def _save(self, state: _State) -> None:
        buffer = io.BytesIO()
        torch.save({"model": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "history": state.history,
                    "step": state.step, "run_id": state.run_id, "config": self.config.to_dict()}, buffer)
        atomic_write_bytes(Path(self.cell.checkpoint), buffer.getvalue())

    def _create_run(self, client) -> str:
        config, world = self.config, self.world
        tags = {**store.git_state(), keys.FINGERPRINT_TAG: config.fingerprint(), keys.ROLE_TAG: keys.ROLE_CELL,
                keys.STUDY_TAG: config.study, keys.CELL_TAG: config.cell or config.run_name,
                keys.MODEL_TAG: config.model, keys.SHORTCUT_TAG: config.shortcut or "none",
                keys.SEED_TAG: str(config.seed), keys.TORCH_VERSION_TAG: torch.__version__,
                keys.PROCESSOR_TAG: processor_description(),
                keys.DEVICE_TAG: torch.cuda.get_device_name(world.device) if world.device.type == "cuda" else "cpu",
                keys.DATA_DESCRIPTION_TAG: self.data.description}
        if self.cell.parent_run_id:
            tags[keys.PARENT_TAG] = self.cell.parent_run_id
        experiment = store.experiment_id(config.study, self.cell.uri)
        params = {**config.to_dict(), **self.description, "world_size": world.size, "backend": world.backend,
                  "per_process_batch": self.per_rank, "ddp": isinstance(self.model, DistributedDataParallel),
                  "effective_lr": config.effective_lr, "decoder": DECODER,
                  "normalisation": NORMALISATION, "schedule": "multistep",
                  "classes": len(self.data.classes), "train_images": len(self.train_items),
                  "val_images": len(self.val_items), keys.TOTAL_STEPS_PARAM: self.steps_per_epoch * config.epochs,
                  "cut_from_the_recipe": "; ".join(config.cut) or "none"}
        return store.create_run(client, experiment, config.run_name, tags, params)


# How long rank 0 waits, after a collective failed, for the stop signal that may have ended a partner first.
STOP_GRACE_SECONDS = 2.0


def _per_class(items, limit: int | None) -> tuple[tuple[str, int], ...]:
    """The first ``limit`` images of each class (all if None), interleaved class by class so that any
    prefix, such as the mean image's sample, is class-balanced."""
    by_class: dict[int, list] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    kept = [images[:limit] if limit else images for _, images in sorted(by_class.items())]
    return tuple(item for rank in range(max(map(len, kept), default=0)) for images in kept
                 if rank < len(images) for item in [images[rank]])



def main(argv: list[str] | None = None) -> int:
    """One rank of a cell, for a launcher that starts every rank itself, torchrun on one node::

        torchrun --nproc_per_node 8 -m resnet.imagenet.loop data=/path/to/imagenet model=resnet34 \\
            shortcut=A world_size=8 [study=adhoc] [tracking_uri=http://host:5000]

    (A study's cells go through their notebook instead, which starts the processes itself.)"""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m resnet.imagenet.loop", description=main.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="*", metavar="key=value", help="ImageNetConfig settings, tracking_uri")
    pairs = parser.parse_args(argv).settings
    malformed = [pair for pair in pairs if "=" not in pair]
    if malformed:
        parser.error(f"expected key=value, got {', '.join(malformed)}")
    values = dict(pair.split("=", 1) for pair in pairs)
    tracking_uri = values.pop("tracking_uri", None)
    try:
        config = ImageNetConfig.from_mapping(values)
        run_id = train_imagenet(config, tracking_uri=tracking_uri)
    except (ConfigError, DataError) as error:
        print(f"resnet.imagenet.loop: {error}", file=sys.stderr)
        return 2
    if run_id is not None:  # rank 0's
        print(f"{config.run_name}: MLflow run {run_id}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
