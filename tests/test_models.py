"""The network builders: exact parameter counts, torchvision compatibility, shortcut options."""

import pytest
import torch
import torchvision

from resnet.measures import count_multiply_adds, count_parameters, three_by_three_responses
from resnet.models import (
    ZeroPadShortcut,
    build_model,
    list_models,
)

# Parameter counts with the ImageNet stem and 1000 classes. B matches torchvision.
IMAGENET_COUNTS = [
    ("resnet18", "B", 11_689_512),
    ("resnet18", "A", 11_515_688),
    ("resnet18", "C", 12_043_816),
    ("plain18", None, 11_515_688),
    ("resnet34", "B", 21_797_672),
    ("resnet34", "A", 21_623_848),
    ("resnet34", "C", 22_716_840),
    ("plain34", None, 21_623_848),
]


@pytest.mark.parametrize("name, shortcut, expected", IMAGENET_COUNTS)
def test_imagenet_parameter_counts(name, shortcut, expected):
    model = build_model(name, shortcut=shortcut, stem="imagenet", num_classes=1000)
    assert count_parameters(model) == expected


@pytest.mark.parametrize(
    "name, expected",
    [("resnet18", 11_173_962), ("plain18", 11_000_138), ("resnet34", 21_282_122), ("plain34", 21_108_298)],
)
def test_cifar_stem_parameter_counts(name, expected):
    assert count_parameters(build_model(name)) == expected


@pytest.mark.parametrize(
    "name, expected",
    [
        ("resnet20", 269_722),
        ("resnet32", 464_154),
        ("resnet44", 658_586),
        ("resnet56", 853_018),
        ("resnet110", 1_727_962),
    ],
)
def test_cifar_family_parameter_counts(name, expected):
    # The paper's section 4.2: 0.27M ... 1.7M parameters with option A.
    model = build_model(name)
    assert count_parameters(model) == expected
    plain = name.replace("resnet", "plain")
    assert count_parameters(build_model(plain)) == expected  # plain = option A minus the additions


@pytest.mark.parametrize("name, giga", [("resnet18", 1.814), ("resnet34", 3.664)])
def test_multiply_adds_match_the_paper(name, giga):
    model = build_model(name, shortcut="B", stem="imagenet", num_classes=1000)
    assert round(count_multiply_adds(model, image_size=224) / 1e9, 3) == giga


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_loads_torchvision_weights_strictly(name):
    ours = build_model(name, shortcut="B", stem="imagenet", num_classes=1000)
    reference = getattr(torchvision.models, name)()
    theirs = reference.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.items()}
    ours.load_state_dict(theirs, strict=True)
    ours.eval(), reference.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


def test_option_a_pads_exact_zeros_and_has_no_parameters():
    model = build_model("resnet18", shortcut="A")
    pads = [m for m in model.modules() if isinstance(m, ZeroPadShortcut)]
    assert len(pads) == 3  # layer2..4 change shape
    assert all(sum(p.numel() for p in m.parameters()) == 0 for m in pads)
    x = torch.randn(2, 64, 8, 8)
    y = ZeroPadShortcut(64, 128, stride=2)(x)
    assert y.shape == (2, 128, 4, 4)
    assert torch.equal(y[:, :64], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 64:]) == 0


def test_option_c_projects_every_block_and_b_only_where_shape_changes():
    def projections(model):
        return sum(
            1 for m in model.modules() if hasattr(m, "downsample") and isinstance(m.downsample, torch.nn.Sequential)
        )

    assert projections(build_model("resnet34", shortcut="C")) == 3 + 4 + 6 + 3
    assert projections(build_model("resnet34", shortcut="B")) == 3
    assert projections(build_model("resnet34", shortcut="A")) == 0
    assert projections(build_model("plain34")) == 0


def test_plain_nets_do_not_add_the_input():
    torch.manual_seed(0)
    plain = build_model("plain20")
    residual = build_model("resnet20")
    residual.load_state_dict(plain.state_dict())  # same parameters ...
    plain.eval(), residual.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(plain(x), residual(x))  # ... different function


def test_initialisation_is_he_normal_and_bn_identity():
    torch.manual_seed(0)
    model = build_model("resnet56")
    conv = model.layer3[0].conv2  # 64 -> 64 channels, 3x3: fan_out = 576
    assert abs(conv.weight.std().item() - (2 / 576) ** 0.5) < 0.003
    assert all(
        torch.all(m.weight == 1) and torch.all(m.bias == 0)
        for m in model.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    )


def test_three_by_three_responses_cover_every_3x3_layer():
    assert len(three_by_three_responses(build_model("resnet20"))) == 18  # 9 blocks x 2
    assert len(three_by_three_responses(build_model("resnet50"))) == 16  # one 3x3 per bottleneck


def test_registry_names():
    names = list_models()
    assert names[:2] == ["plain18", "plain20"]
    expected = {
        "plain18",
        "plain34",
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "plain20",
        "plain32",
        "plain44",
        "plain56",
        "plain110",
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "resnet110",
        "resnet1202",
    }
    assert set(names) == expected


# The deepest networks are costly on the CPU; a 16x16 input keeps every name within seconds.
@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_one_step_on_the_cpu(name):
    torch.manual_seed(0)
    model = build_model(name)
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 7])
    logits = model(x)
    assert logits.shape == (2, 10)
    torch.nn.functional.cross_entropy(logits, y).backward()
    assert torch.isfinite(logits).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="resnet19"), "valid depths for resnet: 18, 20, 32, 34"),
        (dict(name="plain1202"), "valid depths for plain: 18, 20, 32, 34, 44, 56, 110"),
        (dict(name="vgg16"), "legal values: plain18"),
        (dict(name="plain18", shortcut="A"), "plain network and has no shortcuts"),
        (dict(name="resnet18", shortcut="D"), "legal values: A, B, C"),
        (dict(name="resnet18", stem="tiny"), "legal values: cifar, imagenet"),
        (dict(name="resnet20", stem="imagenet"), "only legal stem is 'cifar'"),
    ],
)
def test_bad_arguments_name_the_legal_values(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build_model(name, **kwargs)


@pytest.mark.parametrize("name, shortcut", [("resnet20", "A"), ("resnet18", "B"), ("resnet34", "C"), ("resnet50", "B")])
def test_zero_init_residual_zeroes_the_last_bn_gamma_of_every_residual_branch_and_nothing_else(name, shortcut):
    torch.manual_seed(0)
    default = build_model(name, shortcut=shortcut)
    torch.manual_seed(0)
    zeroed = build_model(name, shortcut=shortcut, zero_init_residual=True)
    last_bn = "bn3" if name == "resnet50" else "bn2"
    blocks = {block_name for block_name, module in zeroed.named_modules() if hasattr(module, "residual")}
    expected_zero = {f"{block}.{last_bn}.weight" for block in blocks}
    zero = {key for key, value in zeroed.state_dict().items() if key.endswith(".weight") and not value.any()}
    assert zero == expected_zero
    assert len(expected_zero) == {"resnet20": 9, "resnet18": 8, "resnet34": 16, "resnet50": 16}[name]
    # Every other tensor is what the default initialisation gives (the same random draws, in order).
    for key, value in default.state_dict().items():
        if key not in expected_zero:
            assert torch.equal(value, zeroed.state_dict()[key]), key
    assert all(default.state_dict()[key].eq(1).all() for key in expected_zero)


def test_a_zero_initialised_residual_network_starts_as_its_shortcuts():
    torch.manual_seed(0)
    model = build_model("resnet20", zero_init_residual=True).eval()
    images = torch.randn(4, 3, 32, 32)
    stem = model.relu(model.bn1(model.conv1(images)))
    # Each block then computes relu(0 + shortcut(x)); the stream after the stem is non-negative, so the
    # first stage passes it on unchanged.
    assert torch.allclose(model.layer1(stem), stem)


def test_zero_init_residual_on_a_plain_network_is_an_error():
    with pytest.raises(ValueError, match="plain network: zero_init_residual applies to residual networks"):
        build_model("plain20", zero_init_residual=True)
