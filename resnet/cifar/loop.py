"""Train one configuration, the paper's way, with every epoch tracked in MLflow: the schedule, the
loop, checkpoints and resume. What one step is lives in ``engine.py``.

The recipe (section 4.2 of He et al. 2015, CIFAR-10; the numbers in ``paper.py``): SGD with
momentum 0.9, weight decay 1e-4, batch 128, learning rate 0.1 divided by 10 at 32k and 48k
iterations, stop at 64k; the per-pixel mean subtracted; per image 4-pixel zero padding, a random
32x32 crop and a horizontal flip.

The final training error is the mean over the last 390 iterations (one epoch of 50k images at
batch 128), whatever the epoch boundaries: 64,000 = 164 x 390 + 40, so the last epoch is partial.
A run with ``window_steps`` logs a row every that many steps, its training error over them, and
its final training error over the last window (the CPU profiles: 39 steps, about 5,000 images).

Speed without changing the recipe: the data set lives on the device as uint8 and each epoch is
augmented there in a few large gathers; on CUDA the whole training step (forward, backward, SGD) is
captured once in a CUDA graph and replayed. Metrics accumulate on the device and are read once per
row.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .. import paper
from ..hardware import processor_description
from ..measures import count_multiply_adds, count_parameters
from ..models import build_model
from ..paths import atomic_write_bytes
from ..tracking import keys, store
from ..tracking.keys import TOTAL_STEPS_PARAM
from ..training.console import print_row, progress_bar
from ..training.engine import (
    LAYER_STATISTICS_BATCH,
    SGD,
    Normalisation,
    Precision,
    StepMetrics,
    TrainStep,
    evaluate,
    layer_statistics,
    make_train_step,
    resolve_device,
    stage_output_stds,
)
from ..training.stop import StopSignals
from .checkpoints import checkpoint_path, continuable, keep_last_state
from .config import WARMUP_CHECK_STEPS, TrainConfig
from .data import Cifar10, load_cifar10, measurement_sample, subset, validation_split
from .input import normalisation_for, prepare_epoch
from .schedule import Schedule


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the MLflow run was ended FAILED with the reason."""


@dataclass
class TrainResult:
    run_id: str
    config: TrainConfig
    history: list[dict[str, float]] = field(default_factory=list)
    step_mode: str = "eager"


@dataclass
class _Progress:
    """What a checkpoint holds besides the weights and the step record: where the run is."""

    history: list[dict[str, float]]
    step: int = 0
    warming_up: bool = False
    run_id: str | None = None
    initial: dict[str, float] = field(default_factory=dict)  # measured before the first step


def prepare_data(config: TrainConfig, data: Cifar10 | None = None) -> Cifar10:
    data = data if data is not None else load_cifar10(config.data)
    if config.validation:
        data = validation_split(data, paper.VALIDATION_SIZE)
    if config.train_subset or config.test_subset:
        data = subset(data, config.train_subset, config.test_subset, seed=0)
    return data


def train(
    config: TrainConfig,
    *,
    tracking_uri: str | None = None,
    checkpoint_dir: str | Path | None = None,
    data: Cifar10 | None = None,
    parent_run_id: str | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``config`` to the end, resuming from its checkpoint if one exists, and log to MLflow.

    ``on_epoch_end`` is called with each epoch's metrics after its checkpoint is written (live
    plots in a notebook; tests use it to interrupt a run).
    """
    device = resolve_device(config.device)  # fails before any work if CUDA is missing
    config = config.resolved_for(device.type)
    if config.threads:
        torch.set_num_threads(config.threads)
    data = prepare_data(config, data)
    uri = store.prepare_store(tracking_uri)
    mlflow_client = store.client(uri)
    checkpoint_file = checkpoint_path(config, checkpoint_dir)
    run = _Run.start(config, data, device)

    continued_from = None
    if checkpoint_file.is_file():
        state = run.restore(checkpoint_file)
        state.run_id = store.reopen_run(mlflow_client, state.run_id)
    elif (kept := continuable(config, run.schedule, len(data.train_labels), checkpoint_dir)) is not None:
        state = run.restore(kept)
        continued_from, state.run_id = state.run_id, None
        state.history = [_as_logged(row, config) for row in state.history]
        if state.step % run.schedule.steps_per_row:  # kept inside a row: this run finishes that row
            run.resume_row(state.history.pop(), state.step)
        print(f"continuing {config.run_name} from iteration {state.step:,} (a finished shorter run, MLflow run "
              f"{continued_from}): its first {len(state.history)} rows are not trained again", flush=True)
    else:
        state = _Progress(history=[], warming_up=config.warmup, initial=run.stage_stds("init"))
    if state.run_id is None:
        experiment = store.experiment_id(config.study, uri)
        prefix = ({keys.CONTINUED_FROM_TAG: continued_from, keys.PREFIX_STEPS_TAG: str(state.step)}
                  if continued_from else {})
        state.run_id = _create_run(mlflow_client, experiment, config, data, run, parent_run_id, prefix)
        # The checkpoint may have outlived its run: log what it holds.
        store.log_metrics(mlflow_client, state.run_id, [{"epoch": 0, **state.initial}, *state.history])
    elif state.history:
        unit = "window" if config.window_steps else "epoch"
        print(f"resuming {config.run_name} at {unit} {len(state.history) + 1}/{run.schedule.rows} "
              f"(MLflow run {state.run_id})")

    result = TrainResult(state.run_id, config, state.history)
    # The stop signals' handler stays until the run is recorded as KILLED: a second signal must not
    # cut that short.
    with StopSignals() as signals:
        try:
            for epoch in range(len(state.history) + 1, run.schedule.rows + 1):
                metrics = run.epoch(epoch, state, progress)
                result.step_mode = run.train_step.mode
                with signals.recording():
                    state.history.append(metrics)
                    store.log_metrics(mlflow_client, state.run_id, [metrics])
                    run.save(checkpoint_file, state)
                print_row(config.run_name, metrics, run.schedule.rows, "window" if config.window_steps else "epoch")
                if on_epoch_end is not None:
                    on_epoch_end(metrics)
        except TrainingDiverged as error:
            store.end_run(mlflow_client, state.run_id, keys.STATUS_FAILED, f"diverged: {error}",
                             _history_files(state.history))
            checkpoint_file.unlink(missing_ok=True)  # resuming a NaN run would only diverge again
            raise
        except KeyboardInterrupt as stop:
            store.end_run(mlflow_client, state.run_id, keys.STATUS_KILLED,
                             f"interrupted ({stop or 'Ctrl-C'}); rerun to resume from the last epoch",
                             _history_files(state.history))
            raise
        except Exception as error:
            store.end_run(mlflow_client, state.run_id, keys.STATUS_FAILED, f"{type(error).__name__}: {error}",
                             _history_files(state.history))
            raise

    final = {"final_train_error": run.record.final_error(state.step, config.batch_size), **run.stage_stds("final")}
    store.log_metrics(mlflow_client, state.run_id, [{"epoch": state.history[-1]["epoch"], **final}])
    for row in state.history:  # the run's one final number, on every row of its CSV
        row["final_train_error"] = final["final_train_error"]
    store.log_files(mlflow_client, state.run_id, {
        "state_dict.pt": run.weights(), **_history_files(state.history),
        "config.json": json.dumps(config.to_dict(), indent=2).encode()})
    mlflow_client.set_terminated(state.run_id, keys.STATUS_FINISHED)
    keep_last_state(config, checkpoint_file, state.step, checkpoint_dir)
    return result


# What an epoch logs every time; the test error and the diagnostics only where the run looks at the test set.
EVERY_EPOCH = ("epoch", "step", "train_error", "train_loss", "lr", "max_step_loss", "epoch_seconds",
               "images_per_second")


def _as_logged(row: dict[str, float], config: TrainConfig) -> dict[str, float]:
    """A kept run's epoch as this run logs it: the kept run looked at the test set at its own last epoch,
    which this longer run only does every ``eval_every`` epochs."""
    return row if row["epoch"] % config.eval_every == 0 else {k: v for k, v in row.items() if k in EVERY_EPOCH}


@dataclass
class _Run:
    """The model, optimiser and data of one run on its device, and what one epoch does with them."""

    config: TrainConfig
    schedule: Schedule
    precision: Precision
    normalise: Normalisation
    model: nn.Module
    optimizer: SGD
    lr: torch.Tensor  # the learning rate, a device tensor the (graphed) step reads
    generator: torch.Generator
    tensors: dict[str, torch.Tensor]
    record: StepMetrics
    description: dict[str, int]  # parameters, multiply-adds and SGD steps in all, for the MLflow run
    train_step: TrainStep | None = None
    # The augmented epoch in use, its index, and the generator's state before it was drawn: a checkpoint
    # inside an epoch saves that state, so that a resumed run redraws the same epoch.
    epoch_data: tuple[torch.Tensor, torch.Tensor] | None = None
    epoch_index: int = -1
    epoch_start_state: torch.Tensor | None = None

    @classmethod
    def start(cls, config: TrainConfig, data: Cifar10, device: torch.device) -> _Run:
        precision = Precision.for_device(config.precision, device, config.layout)
        schedule = Schedule.for_config(config, len(data.train_labels))
        torch.manual_seed(config.seed)
        model = build_model(config.model, shortcut=config.shortcut, stem=config.stem,
                            zero_init_residual=config.zero_init_residual)
        description = {"parameters": count_parameters(model), "multiply_adds": count_multiply_adds(model),
                       TOTAL_STEPS_PARAM: schedule.total_steps}
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        model = precision.place_model(model)
        lr = torch.tensor(schedule.lr_at(0), device=device)
        optimizer = SGD(model.parameters(), lr, config.momentum, config.weight_decay)
        generator = torch.Generator(device=device).manual_seed(config.seed)
        tensors = {name: getattr(data, name).to(device)
                   for name in ("train_images", "train_labels", "test_images", "test_labels")}
        normalise = normalisation_for(config.normalisation, tensors["train_images"])
        # The final training error's window: one row, at most the paper's epoch of 390 steps.
        record = StepMetrics(device, window=config.final_error_steps(len(data.train_labels)))
        return cls(config, schedule, precision, normalise, model, optimizer, lr, generator, tensors, record,
                   description)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """SGD step ``step``'s batch: its epoch augmented when first needed, all at once."""
        epoch, position = divmod(step, self.schedule.steps_per_epoch)
        if self.epoch_index != epoch:
            self.epoch_start_state = self.generator.get_state()
            self.epoch_data = prepare_epoch(self.tensors["train_images"], self.tensors["train_labels"],
                                            self.generator, self.precision, self.normalise)
            self.epoch_index = epoch
        size = self.config.batch_size
        return tuple(part[position * size:(position + 1) * size] for part in self.epoch_data)

    def epoch(self, epoch: int, state: _Progress, progress: bool) -> dict[str, float]:
        """One row's SGD steps (an epoch or a window; fewer if the run ends inside it), then the test
        set; the training metrics are read in one host sync at the end."""
        config, schedule, batch = self.config, self.schedule, self.config.batch_size
        if self.train_step is None:
            self.train_step = make_train_step(self.model, self.optimizer, self.precision, self.record,
                                              config.step_mode, self.batch(state.step))
        started = time.perf_counter()  # after any capture: capture time is not training time
        row_start = state.step - state.step % schedule.steps_per_row  # below state.step: a continued row
        if row_start == state.step:
            self.record.reset_epoch()
        steps = min(row_start + schedule.steps_per_row, schedule.total_steps) - state.step
        bar = progress_bar(progress, steps * batch, f"{config.run_name} {epoch}/{schedule.rows}")
        current_lr = None
        for _ in range(steps):
            wanted = paper.WARMUP_LR if state.warming_up else schedule.lr_at(state.step)
            if wanted != current_lr:
                self.lr.fill_(wanted)
                current_lr = wanted
            self.train_step(*self.batch(state.step))
            state.step += 1
            if state.warming_up and state.step % WARMUP_CHECK_STEPS == 0:
                # One host sync per check, during the warm-up only.
                state.warming_up = self.record.recent_error(WARMUP_CHECK_STEPS, batch) >= paper.WARMUP_UNTIL_TRAIN_ERROR
            if bar is not None:
                bar.update(batch)
        images = (state.step - row_start) * batch
        loss_sum, error_count, loss_max = torch.stack(  # the epoch's one host sync
            [self.record.loss_sum, self.record.error_count.float(), self.record.loss_max]).tolist()
        seconds = time.perf_counter() - started
        if bar is not None:
            bar.close()
        if not math.isfinite(loss_sum):
            raise TrainingDiverged(f"training loss is {loss_sum / images} at epoch {epoch} (step {state.step})")
        metrics = {"epoch": epoch, "step": state.step, "train_error": 100.0 * error_count / images,
                   "train_loss": loss_sum / images}
        looked_at = epoch % config.eval_every == 0 or epoch == schedule.rows
        if looked_at:
            test_loss, test_error = evaluate(self.model, self.tensors["test_images"], self.tensors["test_labels"],
                                             self.precision, self.normalise)
            metrics.update(test_error=test_error, test_loss=test_loss)
        metrics.update(lr=current_lr, max_step_loss=loss_max, epoch_seconds=seconds,
                       images_per_second=steps * batch / seconds)
        if looked_at and config.diagnostics:  # Figure 7: the 3x3 responses, on a fixed batch of test images
            fixed = self.diagnostics_sample("test")
            sample = self.normalise(self.tensors["test_images"][fixed], torch.float32)
            metrics.update(layer_statistics(self.model, sample, self.tensors["test_labels"][fixed]))
        return metrics

    def resume_row(self, row: dict[str, float], step: int) -> None:
        """Go on with a row a kept run ended inside (it logged that part as a short row): its sums as that run
        had them (exactly: the logged means are the float32 sums divided by the images), its test look dropped."""
        images = (step % self.schedule.steps_per_row) * self.config.batch_size
        self.record.loss_sum.fill_(row["train_loss"] * images)
        self.record.error_count.fill_(round(row["train_error"] * images / 100.0))
        self.record.loss_max.fill_(row["max_step_loss"])

    def stage_stds(self, when: str) -> dict[str, float]:
        """``stage_std_<when>_<stage>``: the residual stream's std on a fixed batch of training
        images (with diagnostics on)."""
        if not self.config.diagnostics:
            return {}
        batch = self.normalise(self.tensors["train_images"][self.diagnostics_sample("train")], torch.float32)
        return {f"stage_std_{when}_{stage}": std for stage, std in stage_output_stds(self.model, batch).items()}

    def diagnostics_sample(self, split: str) -> torch.Tensor:
        """The fixed batch the diagnostics measure on: a class-balanced sample of ``split`` drawn with the run's
        seed (``cifar.data.measurement_sample``; its own generator, so training's draws are untouched)."""
        labels = self.tensors[f"{split}_labels"]
        return measurement_sample(labels.cpu(), LAYER_STATISTICS_BATCH, self.config.seed).to(labels.device)

    def restore(self, path: Path) -> _Progress:
        saved = torch.load(path, map_location=self.precision.device, weights_only=False)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.generator.set_state(saved["generator"].cpu())
        self.epoch_index = -1  # the next batch redraws its epoch from this state
        for tensor, value in zip(self.record.window_tensors(), saved["window"], strict=True):
            tensor.copy_(value)
        # oneDNN sums in another order with another thread count: a run goes on with the count it ran with, or it
        # would not repeat digit for digit (a study gives its last cell every core).
        threads = saved.get("threads")
        if self.precision.device.type == "cpu" and threads and threads != torch.get_num_threads():
            print(f"{self.config.run_name}: going on with the {threads} CPU thread{'s' if threads != 1 else ''} it ran "
                  f"with, not {torch.get_num_threads()}, so that it repeats an uninterrupted run", flush=True)
            torch.set_num_threads(threads)
        return _Progress(saved["history"], saved["step"], saved["warming_up"], saved["run_id"], saved["initial"])

    def save(self, path: Path, state: _Progress) -> None:
        buffer = io.BytesIO()
        inside_epoch = state.step % self.schedule.steps_per_epoch != 0
        generator = self.epoch_start_state if inside_epoch else self.generator.get_state()
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "generator": generator, "window": self.record.window_tensors(),
                    "history": state.history, "step": state.step, "warming_up": state.warming_up,
                    "run_id": state.run_id, "initial": state.initial, "config": self.config.to_dict(),
                    "threads": torch.get_num_threads()}, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def weights(self) -> bytes:
        buffer = io.BytesIO()
        torch.save({k: v.cpu() for k, v in self.model.state_dict().items()}, buffer)
        return buffer.getvalue()


def _create_run(mlflow_client, experiment: str, config: TrainConfig, data: Cifar10, run: _Run,
                parent_run_id: str | None, prefix: dict[str, str]) -> str:
    device = run.precision.device
    tags = {
        **store.git_state(),
        keys.FINGERPRINT_TAG: config.fingerprint(),
        keys.ROLE_TAG: keys.ROLE_CELL,
        keys.STUDY_TAG: config.study,
        keys.CELL_TAG: config.cell or config.run_name,
        keys.MODEL_TAG: config.model,
        keys.SHORTCUT_TAG: config.shortcut or "none",
        keys.SEED_TAG: str(config.seed),
        keys.DEVICE_TAG: torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        keys.TORCH_VERSION_TAG: torch.__version__, keys.PROCESSOR_TAG: processor_description(),
        keys.DATA_PROVENANCE_TAG: data.provenance,
        keys.DATA_DESCRIPTION_TAG: data.description,
        **({keys.LINEAGE_TAG: config.lineage()} if config.lineage() else {}), **prefix,
    }
    if parent_run_id:
        tags[keys.PARENT_TAG] = parent_run_id
    return store.create_run(
        mlflow_client, experiment, config.run_name, tags, {**config.to_dict(), **run.description}
    )


def _history_files(history: list[dict[str, float]]) -> dict[str, bytes]:
    return {"metrics.csv": store.metrics_csv(history)} if history else {}
