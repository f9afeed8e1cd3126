"""One analysis of one trained CIFAR-10 run (``resnet.analysis``): which measurement, which run it measures,
the network and data that run trained, and the measurement's own sizes. A study runs its analyses as cells
of the same pool as its training cells (``studies.analyses``); each logs an MLflow run of its own."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..cifar.config import TrainConfig
from ..models import architecture
from ..settings import ConfigError, from_mapping, identity_hash

SAMPLE = "class-balanced"
# The measurements (issue 28): Veit et al. 2016, Balduzzi et al. 2017, Li et al. 2018.
ANALYSES = ("lesion", "shattering", "surface")
# Which networks each measures, by (model, shortcut option, zero-init): the lesion every network and the
# ablation (the 20-layer nets are its control at matched training error: plain-20 ends near ResNet-56 (A)); the
# loss surface plain against residual at the deepest depth; the shattering every network (depth 20 against 56,
# plain against residual).
DEEPEST_ONLY = {"lesion": False, "surface": True, "shattering": False}
WITH_ABLATION = {"lesion": True, "surface": False, "shattering": True}
# What a trained network's analyses are measured at; the shattering also at initialisation, which needs
# no training (and is the only analysis of a profile whose networks end barely trained, the laptop's).
AT_INITIALISATION = "init"
AT_END = "final"
NOT_IDENTITY = ("device", "threads", "study", "run_name", "cell")
# The measurement sizes a profile may set (``analysis_settings``), each for the analysis its name begins with.
SIZE_PREFIXES = {"lesion_": "lesion", "shattering_": "shattering", "surface_": "surface"}


def applies(setting: str, analysis: str) -> bool:
    return any(setting.startswith(prefix) and name == analysis for prefix, name in SIZE_PREFIXES.items())


def size_settings() -> list[str]:
    """The names a profile's ``analysis_settings`` may set."""
    return [f.name for f in fields(AnalysisConfig) if f.name.startswith(tuple(SIZE_PREFIXES))]


@dataclass(frozen=True)
class AnalysisConfig:
    analysis: str = "shattering"
    measured_run: str = ""  # the MLflow run id of the trained cell it measures
    moments: tuple[str, ...] = (AT_END,)  # AT_INITIALISATION and/or AT_END (the shattering's may be both)
    model: str = "resnet56"
    shortcut: str | None = None
    zero_init_residual: bool = False
    stem: str = "cifar"
    seed: int = 0
    # The data as the measured run trained on it (``cifar.loop.prepare_data`` reads these four).
    data: str = "download"
    validation: bool = False
    train_subset: int | None = None
    test_subset: int | None = None
    normalisation: str = "per-pixel"
    # Every measurement is made on a fixed, seeded, class-balanced sample of its split
    # (``cifar.data.measurement_sample``, drawn with the measured run's seed), never a prefix: in the identity, so
    # that analyses measured on a prefix (before issue 35: airplanes only, where the split came class by class) are
    # never taken for these.
    sample: str = SAMPLE
    # Lesion: this many test images, error with each block and k = 1..10 random blocks deleted, this many draws
    # each (500 images: a test error to about +-2 points, enough for effects of tens).
    lesion_images: int = 500
    lesion_draws: int = 3
    # Shattering: lines between pairs of test images (16: Balduzzi et al. average over many; the laptop's 15
    # measurements at initialisation then take about 3 s each for ResNet-56 after the notebook's start), points
    # per line, correlation up to this lag.
    shattering_lines: int = 16
    shattering_points: int = 256
    shattering_max_lag: int = 32
    shattering_calibration_images: int = 512  # training images that set BN's statistics at initialisation
    # Loss surface: 1-D curves along this many filter-normalised directions, alpha in [-1, 1] in this many
    # points (51: Li et al.'s own 1-D grid, ``-1:1:51``, fine enough that a sign change of the second difference
    # is a bend of the surface, not of the grid), the loss on this many training images.
    surface_directions: int = 2
    surface_points: int = 51
    surface_images: int = 1024
    # And a 2-D grid over the first two directions, this many points a side in [-1, 1]^2 (0: none). Li et al.'s
    # contour plots (Figure 5); set by the GPU profiles (experiments/cifar-depth.yaml), measured on the GPU there.
    surface_grid: int = 0
    batch_size: int = 128  # the measured run's, for the pool's bookkeeping (an analysis trains nothing)
    precision: str = "fp32"
    device: str = "cpu"
    threads: int | None = None
    study: str = "adhoc"
    run_name: str = ""
    cell: str = ""

    def __post_init__(self) -> None:
        if self.analysis not in ANALYSES:
            raise ConfigError(f"analysis: unknown analysis {self.analysis!r}; legal values: {', '.join(ANALYSES)}")
        try:
            architecture(self.model)
        except ValueError as error:
            raise ConfigError(f"model: {error}") from None
        unknown = [m for m in self.moments if m not in (AT_INITIALISATION, AT_END)]
        if not self.moments or unknown:
            raise ConfigError(f"moments: must list {AT_INITIALISATION} and/or {AT_END}, got {list(self.moments)}")
        if AT_END in self.moments and not self.measured_run:
            raise ConfigError("measured_run: measuring a trained network needs the MLflow run id of its training")
        if self.analysis != "shattering" and self.moments != (AT_END,):
            raise ConfigError(f"moments: the {self.analysis} measures trained networks only ({AT_END})")
        if self.surface_grid and (self.analysis != "surface" or self.surface_grid < 3
                                  or self.surface_directions < 2):
            raise ConfigError(f"surface_grid: a grid of at least 3 points a side for the surface analysis with at "
                              f"least 2 directions, or 0 for none; got {self.surface_grid} for the {self.analysis}"
                              f" with {self.surface_directions} directions")
        if self.sample != SAMPLE:
            raise ConfigError(f"sample: every measurement draws a {SAMPLE} sample (cifar.data.measurement_sample); got "
                              f"{self.sample!r}")
        if self.precision != "fp32":
            raise ConfigError(f"precision: the analyses compute in fp32, got {self.precision!r}")
        if not self.run_name:
            option = f"-{self.shortcut}" if self.shortcut else ""
            variant = "-zero-init" if self.zero_init_residual else ""
            object.__setattr__(self, "run_name", f"{self.analysis}-{self.model}{option}{variant}-s{self.seed}")

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> AnalysisConfig:
        return from_mapping(cls, values)

    @classmethod
    def for_run(cls, analysis: str, trained: TrainConfig, run_id: str, moments: tuple[str, ...],
                settings: dict[str, Any] | None = None) -> AnalysisConfig:
        """The ``analysis`` of the trained run ``run_id`` of ``trained``, with a profile's ``settings`` (its
        ``analysis_settings``) of the ones that apply to this analysis (``applies``)."""
        same = {name: getattr(trained, name) for name in ("model", "shortcut", "zero_init_residual", "stem", "seed",
                                                          "data", "validation", "train_subset", "test_subset",
                                                          "normalisation", "batch_size", "study")}
        own = {key: value for key, value in (settings or {}).items() if applies(key, analysis)}
        return from_mapping(cls, {"analysis": analysis, "measured_run": run_id, "moments": moments, **same, **own})

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["moments"] = list(self.moments)
        return values

    # What the pool and the planner ask of a cell's configuration (as of a TrainConfig).
    def resolved_for(self, device_type: str) -> AnalysisConfig:
        return self if device_type == self.device else replace(self, device=device_type)

    def device_type(self, gpus: bool) -> str:
        """The GPU for a loss-surface grid (hundreds of evaluations of a thousand images); the CPU for the rest,
        small enough that a GPU would spend more on starting than on measuring."""
        return "cuda" if gpus and self.surface_grid else "cpu"

    @property
    def processes(self) -> int:
        return 1

    @property
    def iterations(self) -> int:
        """Its work in training-step equivalents (batches of images through the network), for the pool's
        order only."""
        images = {"lesion": self.lesion_images * (1 + 30 + 30), "surface": self.surface_images
                  * self.surface_directions * self.surface_points,
                  "shattering": 3 * self.shattering_lines * self.shattering_points * len(self.moments)}
        return max(1, images[self.analysis] // self.batch_size)

    epochs = None

    def fingerprint(self) -> str:
        identity = {k: v for k, v in self.to_dict().items() if k not in NOT_IDENTITY}
        if not self.surface_grid:
            del identity["surface_grid"]  # added later: measurements made before it keep their fingerprints
        return identity_hash({"kind": "analysis", **identity})

    def legacy_fingerprints(self) -> dict[str, bool]:
        return {}


