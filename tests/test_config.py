"""The configuration: coercion, validation with the key and legal values, identity (fingerprints)."""

import hashlib
import json

import pytest

from resnet.cifar.config import TrainConfig
from resnet.hardware import resolve_precision
from resnet.settings import ConfigError


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(modle="resnet18"), "unknown parameter 'modle' \\(did you mean 'model'\\?\\)"),
        (dict(model="resnet19"), "model: no resnet network of depth 19"),
        (dict(model="plain18", shortcut="B"), "shortcut: plain18 is a plain network"),
        (dict(schedule="linear"),
         "schedule: unknown schedule 'linear'; legal values: paper, paper-compressed, multistep, cosine"),
        (dict(normalisation="zca"), "normalisation: unknown normalisation 'zca'; legal values: per-pixel, per-channel"),
        (dict(epochs="ten"), "epochs: expected a whole number, got 'ten'"),
        (dict(lr=-1), "lr: must be a positive number"),
        (dict(schedule="multistep", epochs=10), "milestones: the multistep schedule needs milestones"),
        (dict(device="tpu"), "device: unknown device 'tpu'; legal values: auto, cpu, cuda, cuda:N"),
        (dict(warmup="maybe"), "warmup: expected true or false"),
        (dict(model="plain56", zero_init_residual=True),
         "zero_init_residual: plain56 is a plain network: zero_init_residual applies to residual networks"),
        (dict(epochs=3, iterations=100), "give either iterations or epochs"),
    ],
)
def test_bad_configuration_is_rejected_with_the_key_and_legal_values(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_mapping(values)


def test_config_from_mapping_coerces_natural_spellings():
    config = TrainConfig.from_mapping({"model": "resnet18", "shortcut": "none", "schedule": "multistep", "epochs": "20",
                                       "milestones": "10, 15", "lr": 1, "warmup": "true", "precision": "fp32"})
    assert config.shortcut == "B" and config.epochs == 20 and config.milestones == (10, 15)
    assert config.lr == 1.0 and config.warmup is True and config.run_name == "resnet18-B-s0"


def test_precision_auto_resolves_to_bf16_on_cuda_and_fp32_on_the_cpu():
    assert resolve_precision("auto", "cuda") == "bf16" and resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "cuda") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    assert TrainConfig().resolved_for("cuda").precision == "bf16"
    with pytest.raises(ConfigError, match="precision: unknown precision 'fp16'; legal values: auto, bf16, fp32"):
        TrainConfig(precision="fp16")


def test_fingerprint_is_the_identity_of_the_experiment_not_of_where_it_runs():
    base = TrainConfig(model="plain20", epochs=3, schedule="cosine").resolved_for("cpu")
    # The hash of the identity fields, nothing else: 16 hex digits of SHA-256 over sorted JSON.
    where = ("device", "step_mode", "threads", "eval_every", "study", "run_name", "cell")
    # zero_init_residual and window_steps at their defaults, and the layout its precision always ran in, are left
    # out, so that runs recorded before they existed still match.
    left_out = ("zero_init_residual", "window_steps", "layout")
    identity = {k: v for k, v in base.to_dict().items() if k not in where + left_out}
    assert base.fingerprint() == hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    same_experiment = TrainConfig(model="plain20", epochs=3, schedule="cosine", device="cpu", study="elsewhere",
                                  step_mode="eager", run_name="renamed", cell="x").resolved_for("cpu")
    assert same_experiment.fingerprint() == base.fingerprint()
    for change in (dict(seed=1), dict(lr=0.05), dict(epochs=4), dict(model="plain32"), dict(precision="bf16"),
                   dict(window_steps=39), dict(layout="channels_last")):
        other = TrainConfig(**{"model": "plain20", "epochs": 3, "schedule": "cosine", **change}).resolved_for("cpu")
        assert other.fingerprint() != base.fingerprint(), change


def test_precision_is_part_of_the_fingerprint_and_must_be_resolved_first():
    config = TrainConfig(model="plain20", epochs=3, schedule="cosine")
    explicit = TrainConfig(**{**config.to_dict(), "milestones": (), "precision": "fp32"})
    assert config.resolved_for("cpu").fingerprint() == explicit.fingerprint()
    assert config.resolved_for("cuda").fingerprint() != config.resolved_for("cpu").fingerprint()
    with pytest.raises(ConfigError, match="resolve 'auto'"):
        config.fingerprint()


def _hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def test_legacy_fingerprints_are_the_identities_earlier_versions_recorded():
    # Not in the identity (where it ran), or added since (zero_init_residual, window_steps: absent at their defaults;
    # layout: absent where it is the one its precision always ran in).
    where = ("device", "step_mode", "threads", "eval_every", "study", "run_name", "cell", "zero_init_residual",
             "window_steps", "layout")
    compressed = TrainConfig(model="plain20", iterations=3900, schedule="paper-compressed",
                             normalisation="per-channel").resolved_for("cuda")
    identity = {k: v for k, v in compressed.to_dict().items() if k not in where + ("normalisation",)}
    identity["schedule"] = "paper"  # what paper-compressed was called before the absolute schedule
    with_precision = _hash(identity)
    del identity["precision"]
    assert compressed.legacy_fingerprints() == {_hash(identity): True, with_precision: False}
    # Every earlier run was per-channel, and none ran today's paper schedule (stopped early).
    assert TrainConfig(model="plain20", iterations=3900).resolved_for("cuda").legacy_fingerprints() == {}
    assert TrainConfig(model="plain20", iterations=3900, normalisation="per-channel",
                       schedule="paper").resolved_for("cuda").legacy_fingerprints() == {}
    assert TrainConfig(model="plain20", iterations=3900, schedule="paper-compressed").resolved_for(
        "cuda").legacy_fingerprints() == {}
    cosine = TrainConfig(model="plain20", epochs=3, schedule="cosine", normalisation="per-channel").resolved_for("cpu")
    old = {k: v for k, v in cosine.to_dict().items() if k not in where + ("normalisation", "precision")}
    assert _hash(old) in cosine.legacy_fingerprints()


def test_best_precision_is_bf16_where_the_hardware_computes_it_else_fp32(monkeypatch):
    from resnet import hardware

    assert resolve_precision("best", "cuda") == "bf16"
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("best", "cpu") == "bf16"
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("best", "cpu") == "fp32"
    assert TrainConfig(precision="best").resolved_for("cpu").precision == "fp32"


def test_onednn_capped_below_bf16_is_a_cpu_without_it(monkeypatch, tmp_path):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes oneDNN compute bf16 the slow way: best then keeps fp32, and a run says so."""
    from resnet import hardware

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    monkeypatch.setattr(hardware, "Path", lambda _: cpuinfo)
    monkeypatch.setattr(hardware.sys, "platform", "linux")
    for cap in (None, "ALL", "AVX512_CORE_BF16", "AVX512_CORE_AMX"):
        monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
        if cap:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        else:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        assert hardware.cpu_has_native_bf16() is True, cap
    assert hardware.processor_description() == "AMD EPYC (AVX512-BF16, no AMX, AVX2; oneDNN capped at AVX512_CORE_AMX)"
    for cap in ("AVX2", "avx512_core"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert hardware.cpu_has_native_bf16() is False and resolve_precision("best", "cpu") == "fp32", cap
    assert hardware.processor_description() == "AMD EPYC (AVX512-BF16, no AMX, AVX2; oneDNN capped at AVX512_CORE)"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    assert hardware.cpu_has_native_bf16() is False


def test_threads_and_evaluation_frequency_are_not_part_of_the_identity():
    base = TrainConfig(model="plain20", epochs=3, schedule="cosine").resolved_for("cpu")
    other = TrainConfig(model="plain20", epochs=3, schedule="cosine", threads=1, eval_every=2).resolved_for("cpu")
    assert other.fingerprint() == base.fingerprint()
    with pytest.raises(ConfigError, match=r"eval_every: must be a positive whole number of rows \(epochs\), got 0"):
        TrainConfig(eval_every=0)
    with pytest.raises(ConfigError, match="threads: must be a positive whole number or None, got 0"):
        TrainConfig(threads=0)


def test_zero_init_residual_is_part_of_the_identity_and_the_name_and_leaves_earlier_fingerprints_alone():
    default = TrainConfig(model="resnet56", precision="fp32")
    zeroed = TrainConfig(model="resnet56", precision="fp32", zero_init_residual=True)
    assert zeroed.run_name == "resnet56-A-zero-init-s0" and default.run_name == "resnet56-A-s0"
    assert zeroed.fingerprint() != default.fingerprint()
    # Left at its default, the setting is not in the identity: runs recorded before it existed keep
    # their fingerprint (the hash of the identity without the key).
    identity = {k: v for k, v in default.to_dict().items()
                if k not in ("device", "step_mode", "threads", "eval_every", "study", "run_name", "cell",
                             "zero_init_residual", "window_steps", "layout")}
    assert default.fingerprint() == hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    assert zeroed.fingerprint() == hashlib.sha256(
        json.dumps({**identity, "zero_init_residual": True}, sort_keys=True).encode()).hexdigest()[:16]
    assert zeroed.legacy_fingerprints() == {}


def test_warmup_runs_carry_the_rule_that_ends_the_warmup_in_their_identity():
    plain = TrainConfig(model="resnet110", precision="fp32")
    warm = TrainConfig(model="resnet110", precision="fp32", warmup=True)
    where = ("device", "step_mode", "threads", "eval_every", "study", "run_name", "cell", "zero_init_residual",
             "window_steps", "layout")
    identity = {k: v for k, v in warm.to_dict().items() if k not in where}
    # Earlier runs judged the warm-up once per epoch: their fingerprint (without the rule) is not today's.
    assert warm.fingerprint() == _hash({**identity, "warmup_check_steps": 20}) != _hash(identity)
    assert plain.fingerprint() == _hash({**identity, "warmup": False})


def test_a_run_names_its_processor_and_whether_it_computes_bf16_natively(monkeypatch):
    """CPUs differ (bf16 rounding follows the CPU's kernels): the run records which one it ran on (uncapped here;
    a oneDNN cap has its own test)."""
    from resnet.hardware import cpu_has_native_bf16, processor_description

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)

    described = processor_description()
    model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    assert described.startswith(f"{model} (")
    assert ("no AVX512-BF16" not in described or "no AMX" not in described) == cpu_has_native_bf16()
