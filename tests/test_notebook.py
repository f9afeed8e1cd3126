"""The training notebook's driver: its parameter cell is TrainConfig's defaults, and configure()
turns the names a papermill run defined into a config, rejecting the mistyped ones."""

import json
import types

import pytest
from conftest import ROOT

from resnet.cifar.config import TrainConfig
from resnet.imagenet.config import ImageNetConfig
from resnet.settings import ConfigError
from resnet.studies.notebook import RUNNER_OPTIONS, configure


def _parameter_cell_namespace(name: str = "train.ipynb") -> dict:
    notebook = json.loads((ROOT / "notebooks" / name).read_text())
    cells = [c for c in notebook["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "the notebook must have exactly one cell tagged 'parameters'"
    namespace: dict = {}
    exec("".join(cells[0]["source"]), namespace)
    namespace.pop("__builtins__")
    return namespace


def test_the_parameter_cell_states_every_trainconfig_default_and_nothing_else():
    namespace = _parameter_cell_namespace()
    defaults = TrainConfig.__dataclass_fields__
    assert set(namespace) == set(defaults) | set(RUNNER_OPTIONS)
    for name, field in defaults.items():
        value = namespace[name]
        if name == "milestones":  # a list in the notebook, a tuple in the frozen config
            assert tuple(value) == field.default, name
        else:
            assert value == field.default and type(value) is type(field.default), name


def test_the_imagenet_notebooks_parameter_cell_states_every_imagenetconfig_default_and_nothing_else():
    namespace = _parameter_cell_namespace("train_imagenet.ipynb")
    defaults = ImageNetConfig.__dataclass_fields__
    assert set(namespace) == set(defaults) | set(RUNNER_OPTIONS)
    for name, field in defaults.items():
        value = tuple(namespace[name]) if name == "lr_drop_epochs" else namespace[name]
        assert value == field.default and type(value) is type(field.default), name
    config, options = configure({**namespace, "data": "/data/imagenet", "world_size": 8}, set(), ImageNetConfig)
    assert config == ImageNetConfig(data="/data/imagenet", world_size=8) and config.shortcut == "B"
    assert options == {"tracking_uri": None, "parent_run_id": None, "progress": True}


def test_configure_builds_the_config_from_the_names_defined_after_the_baseline():
    baseline = {"driver", "_names_before_parameters"}
    namespace = {"driver": types.ModuleType("driver"), "_names_before_parameters": baseline,
                 "model": "plain20", "epochs": 2, "schedule": "cosine", "precision": "bf16",
                 "tracking_uri": "sqlite:///x.db", "progress": False, "_private": 1, "helper": print}
    config, options = configure(namespace, baseline)
    assert config == TrainConfig(model="plain20", epochs=2, schedule="cosine", precision="bf16")
    assert options == {"tracking_uri": "sqlite:///x.db", "progress": False}


def test_configure_rejects_a_mistyped_parameter_before_any_work():
    with pytest.raises(ConfigError, match="bad notebook parameter: unknown parameter 'epoch' \\(did you mean 'epochs"):
        configure({"model": "plain20", "epoch": 2}, set())
    with pytest.raises(ConfigError, match="bad notebook parameter: precision: unknown precision 'half'"):
        configure({"precision": "half"}, set())


def test_importing_the_driver_leaves_sigterm_alone_and_its_first_call_restores_the_default():
    import importlib
    import signal

    import resnet.studies.notebook

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as papermill's kernel inherits it from the runner
    try:
        importlib.reload(resnet.studies.notebook)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        resnet.studies.notebook.stop_on_sigterm()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_analysis_notebooks_parameter_cell_states_every_analysisconfig_default_and_nothing_else():
    from resnet.analysis.config import AnalysisConfig

    namespace = _parameter_cell_namespace("analyse.ipynb")
    defaults = AnalysisConfig.__dataclass_fields__
    assert set(namespace) == set(defaults) | set(RUNNER_OPTIONS)
    for name, field in defaults.items():
        value = tuple(namespace[name]) if name == "moments" else namespace[name]
        assert value == field.default and type(value) is type(field.default), name
    config, _ = configure({**namespace, "analysis": "lesion", "measured_run": "abc"}, set(), AnalysisConfig)
    assert config.moments == ("final",) and config.run_name == "lesion-resnet56-s0"
