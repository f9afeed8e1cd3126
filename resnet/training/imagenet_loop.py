"""Train one ImageNet cell data-parallel, the paper's way (section 3.4, ``imagenet_config``): one
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
from torch.utils.data import DataLoader, DistributedSampler

from ..config import ConfigError
from ..data import DataError
from ..imagenet import open_imagenet
from ..imagenet_config import ImageNetConfig
from ..measures import count_multiply_adds, count_parameters
from ..models import build_model
from ..paths import atomic_write_bytes, runs_dir
from ..tracking import keys, store
from .distributed import World, check_world, join, launch, launched_world, leave, sum_over_ranks
from .engine import SGD, Precision, StepMetrics
from .imagenet_input import (
    DECODER,
    NORMALISATION,
    ImageNetImages,
    ViewSizes,
    centre_view,
    lighting,
    mean_image,
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
    open_imagenet(config.data)  # a DATA that cannot be read fails here, in one process
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
            # Rank 0 recorded its own end, often a partner's reset connection: record the first failure.
            experiment = store.experiment_id(config.study, uri)
            for run in store.find_runs(experiment, uri, **{keys.FINGERPRINT_TAG: config.fingerprint()})[:1]:
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
        self.precision = Precision.for_device(config.precision, world.device)
        torch.manual_seed(config.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
        network = self.precision.place_model(build_model(config.model, shortcut=config.shortcut, stem="imagenet",
                                                         num_classes=len(self.data.classes)))
        self.description = {"parameters": count_parameters(network), "multiply_adds": count_multiply_adds(
            network, image_size=config.crop)}
        self.network = network  # the model itself, for the checkpoint and the 10-crop test
        self.model = DistributedDataParallel(network) if world.size > 1 else network
        self.lr = torch.tensor(config.lr_at_epoch(1), device=world.device)
        self.optimizer = SGD(self.model.parameters(), self.lr, config.momentum, config.weight_decay)
        self.normalise = mean_image(self.train_items, min(config.mean_images, len(self.train_items)),
                                    self.sizes).to(world.device)  # made on the CPU, used where the batches are
        self.generator = torch.Generator(device=world.device)  # the colour draws: seeded per epoch and rank
        self.train_set = ImageNetImages(self.train_items, training_view, seed=config.seed, sizes=self.sizes)
        self.sampler = DistributedSampler(self.train_set, num_replicas=world.size, rank=world.rank, shuffle=True,
                                          seed=config.seed, drop_last=True)
        self.loader = DataLoader(self.train_set, batch_size=self.per_rank, sampler=self.sampler, drop_last=True,
                                 num_workers=config.workers, pin_memory=world.device.type == "cuda")
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch < 1:
            raise ConfigError(f"batch_size: the global batch {config.batch_size} is larger than the "
                              f"{len(self.train_items)} training images")
        self.record = StepMetrics(world.device, window=self.steps_per_epoch)

    # ------------------------------------------------------------------------------------------
    def run(self) -> None:
        state = self._restore()
        client = store.client(self.cell.uri) if self.world.is_main else None
        if self.world.is_main:
            state.run_id = store.reopen_run(client, state.run_id) if state.run_id else None
            if state.run_id is None:
                state.run_id = self._create_run(client)
                store.log_metrics(client, state.run_id, state.history)
        try:
            for epoch in range(len(state.history) + 1, self.config.epochs + 1):
                metrics = self._epoch(epoch, state)
                state.history.append(metrics)
                if self.world.is_main:
                    store.log_metrics(client, state.run_id, [metrics])
                    self._save(state)
                    print(f"{self.config.run_name} epoch {epoch:>3}/{self.config.epochs}  train_error "
                          f"{metrics['train_error']:6.2f}%  val_error {metrics['val_error']:6.2f}%  "
                          f"lr {metrics['lr']:.4g}  {metrics['images_per_second']:,.0f} img/s", flush=True)
            final = self._ten_crop()
        except KeyboardInterrupt as stop:
            if self.world.is_main:
                store.end_run(client, state.run_id, keys.STATUS_KILLED,
                              f"interrupted ({stop or 'Ctrl-C'}); rerun to resume from the last epoch")
            raise
        except Exception as error:
            if self.world.is_main:
                store.end_run(client, state.run_id, keys.STATUS_FAILED, f"{type(error).__name__}: {error}")
            raise
        if self.world.is_main:
            store.log_metrics(client, state.run_id, [{"epoch": state.history[-1]["epoch"], **final}])
            store.log_files(client, state.run_id, {"config.json": json.dumps(self.config.to_dict(), indent=2).encode()})
            client.set_terminated(state.run_id, keys.STATUS_FINISHED)
            Path(self.cell.checkpoint).unlink(missing_ok=True)

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
            labels = labels.to(self.world.device)
            inputs = self.normalise(images.to(self.world.device), torch.float32)
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
        return items[self.world.rank::self.world.size]  # every validation image on exactly one rank

    @torch.no_grad()
    def _validate(self) -> tuple[float, float, float]:
        view = ImageNetImages(self._mine(self.val_items), centre_view, sizes=self.sizes)
        self.model.eval()
        totals = torch.zeros(4, device=self.world.device, dtype=torch.float64)  # loss, top-1 and top-5 hits, images
        for images, labels in DataLoader(view, batch_size=self.per_rank, num_workers=self.config.workers):
            labels = labels.to(self.world.device)
            inputs = self.precision.layout(self.normalise(images.to(self.world.device), self.precision.input_dtype))
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
        for crops, labels in DataLoader(view, batch_size=max(1, self.per_rank // 10), num_workers=self.config.workers):
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
                keys.DEVICE_TAG: torch.cuda.get_device_name(world.device) if world.device.type == "cuda" else "cpu",
                keys.DATA_DESCRIPTION_TAG: self.data.description}
        if self.cell.parent_run_id:
            tags[keys.PARENT_TAG] = self.cell.parent_run_id
        experiment = store.experiment_id(config.study, self.cell.uri)
        params = {**config.to_dict(), **self.description, "world_size": world.size, "backend": world.backend,
                  "per_process_batch": self.per_rank, "effective_lr": config.effective_lr, "decoder": DECODER,
                  "normalisation": NORMALISATION, "schedule": "multistep",
                  "classes": len(self.data.classes), "train_images": len(self.train_items),
                  "val_images": len(self.val_items), keys.TOTAL_STEPS_PARAM: self.steps_per_epoch * config.epochs,
                  "cut_from_the_recipe": "; ".join(config.cut) or "none"}
        return store.create_run(client, experiment, config.run_name, tags, params)


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

        torchrun --nproc_per_node 8 -m resnet.training.imagenet_loop data=/path/to/imagenet model=resnet34 \\
            shortcut=A world_size=8 [study=adhoc] [tracking_uri=http://host:5000]

    (A study's cells go through their notebook instead, which starts the processes itself.)"""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m resnet.training.imagenet_loop", description=main.__doc__,
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
        print(f"imagenet_loop: {error}", file=sys.stderr)
        return 2
    if run_id is not None:  # rank 0's
        print(f"{config.run_name}: MLflow run {run_id}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
