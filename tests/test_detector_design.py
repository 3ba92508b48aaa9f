"""The detector's design: anchors and training crop planned from the training boxes, and
pre-trained timm backbones under the feature pyramid at the strides the anchors expect."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from medtailor.detect.model import build_detector, feature_extractor, parameter_groups
from medtailor.detect.planning import (
    centred_iou,
    input_divisor,
    mean_best_iou,
    plan_anchors,
    plan_patch_size,
)

RNG = np.random.default_rng(7)


def boxes_of(extents: np.ndarray) -> np.ndarray:
    """Boxes with these extents at random places."""
    corners = RNG.uniform(0, 200, extents.shape)
    return np.concatenate([corners, corners + extents], axis=1)


def ratios(plan: dict) -> np.ndarray:
    shapes = np.asarray(plan["base_anchor_shapes"])
    return shapes[:, 0] / shapes[:, 1]


def test_square_boxes_give_square_anchors():
    sizes = RNG.uniform(12, 60, 80)
    plan = plan_anchors(boxes_of(np.stack([sizes, sizes], axis=1)))
    np.testing.assert_allclose(ratios(plan), 1.0, atol=0.01)
    assert plan["mean_best_iou"] > 0.7


def test_a_two_to_one_box_set_gives_two_to_one_anchors():
    heights = RNG.uniform(10, 40, 80)
    plan = plan_anchors(boxes_of(np.stack([2 * heights, heights], axis=1)))
    np.testing.assert_allclose(ratios(plan), 2.0, rtol=0.01)
    # Tall boxes give tall anchors: the plan reads the axes, it does not assume them.
    plan = plan_anchors(boxes_of(np.stack([heights, 2 * heights], axis=1)))
    np.testing.assert_allclose(ratios(plan), 0.5, rtol=0.01)


def test_mixed_shapes_get_one_anchor_shape_each_and_fit_better_than_fixed_anchors():
    sizes = RNG.uniform(15, 30, 60)
    extents = np.concatenate(
        [
            np.stack([sizes, sizes], 1),
            np.stack([3 * sizes, sizes], 1),
            np.stack([sizes, 3 * sizes], 1),
        ]
    )
    plan = plan_anchors(boxes_of(extents))
    assert sorted(ratios(plan)) == pytest.approx([1 / 3, 1.0, 3.0], rel=0.05)
    fixed = np.array([[16.0, 16.0], [24.0, 12.0], [12.0, 24.0]])
    assert plan["mean_best_iou"] > mean_best_iou(extents, fixed, 3) + 0.05


def test_levels_cover_the_box_sizes_and_strides_follow_the_base_anchor():
    small = plan_anchors(boxes_of(np.full((40, 2), 20.0)))
    assert small["levels"] == 2 and small["returned_layers"] == [1]
    # Boxes from 20 to 320 pixels span four octaves: five levels, the finest at stride 4.
    sizes = np.geomspace(20, 320, 50)
    wide = plan_anchors(boxes_of(np.stack([sizes, sizes], 1)))
    assert wide["returned_layers"] == [1, 2, 3, 4] and wide["levels"] == 5
    base = wide["base_anchor_shapes"][0][0]
    largest = base * 2 ** (wide["levels"] - 1)
    assert largest >= 320 / np.sqrt(2)
    # Larger lesions start on a coarser stage.
    big = plan_anchors(boxes_of(np.full((40, 2), 200.0)))
    assert big["returned_layers"][0] > small["returned_layers"][0]


def test_centred_iou_is_the_overlap_of_boxes_sharing_a_centre():
    iou = centred_iou(np.array([[10.0, 10.0]]), np.array([[10.0, 10.0], [20.0, 10.0], [5.0, 5.0]]))
    np.testing.assert_allclose(iou, [[1.0, 0.5, 0.25]])


def test_a_plan_needs_boxes():
    with pytest.raises(ValueError, match="no training box"):
        plan_anchors(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="no training box"):
        plan_patch_size(np.zeros((0, 4)), [2, 3], np.array([[512, 512]]))


LARGE_IMAGES = np.array([[1024, 900], [800, 1200], [1000, 1000]])


def test_the_planned_crop_holds_all_but_the_largest_boxes_whole():
    # 2:1 boxes 20 to 200 pixels long: a 2:1 crop, each side the first multiple of the
    # divisor (64 for stages 1-4) at or above the 99th-percentile extent.
    heights = np.geomspace(10, 100, 200)
    extents = np.stack([2 * heights, heights], 1)
    size = plan_patch_size(boxes_of(extents), [1, 2, 3, 4], LARGE_IMAGES)
    assert size == [256, 128]
    needed = np.percentile(extents, 99, axis=0)
    assert np.all(np.asarray(size) >= needed) and np.all(np.asarray(size) - 64 < needed)


def test_the_planned_crop_keeps_two_coarse_cells_and_stays_within_the_images():
    tiny = boxes_of(np.full((30, 2), 6.0))
    # Stages 2-3 (divisor 32): two cells of the pooled level, however small the boxes.
    assert plan_patch_size(tiny, [2, 3], LARGE_IMAGES) == [64, 64]
    # Boxes larger than the images: the crop is the median image, padded to the divisor.
    huge = boxes_of(np.full((30, 2), 500.0))
    assert plan_patch_size(huge, [1, 2], np.array([[200, 150], [210, 150], [190, 140]])) == [
        208,
        160,
    ]


TIMM_CFG = {
    "backbone": "efficientnet_lite0",
    "backbone_init": "imagenet",
    "fpn_channels": 32,
    "returned_layers": [2, 3],
    "base_anchor_shapes": [[16, 16], [24, 12], [12, 24]],
    "patch_size": [128, 128],
}
SELECTION = {
    "min_candidate_score": 2.0,
    "nms_iou": 0.5,
    "max_candidates_per_image": 100,
    "sliding_window_overlap": 0.25,
}


@pytest.mark.parametrize("returned_layers", [[1, 2], [2, 3], [2, 3, 4]])
def test_a_timm_backbone_pyramid_has_the_strides_the_anchors_expect(returned_layers):
    cfg = {**TIMM_CFG, "returned_layers": returned_layers}
    extractor = feature_extractor(2, cfg)
    maps = extractor(torch.rand(1, 1, 128, 128))
    strides = [128 // m.shape[-1] for m in maps.values()]
    expected = [2 ** (k + 1) for k in returned_layers]
    assert strides == [*expected, 2 * expected[-1]]  # plus the pyramid's pooled level
    assert all(m.shape[1] == 32 for m in maps.values())
    # MONAI's ResNet under the same settings gives the same strides.
    resnet = feature_extractor(2, {**cfg, "backbone": "resnet", "backbone_depth": 10, "width": 8})
    assert [128 // m.shape[-1] for m in resnet(torch.rand(1, 1, 128, 128)).values()] == strides


@pytest.mark.parametrize("returned_layers", [[1], [2, 3], [1, 2, 3, 4]])
def test_the_input_divisor_keeps_every_pyramid_level_at_its_stride(returned_layers):
    cfg = {**TIMM_CFG, "returned_layers": returned_layers}
    divisor = input_divisor(returned_layers)
    expected = [2 ** (k + 1) for k in returned_layers]
    expected.append(2 * expected[-1])  # the pyramid's pooled level
    for name in ("efficientnet_lite0", "resnet"):
        extractor = feature_extractor(
            2, {**cfg, "backbone": name, "backbone_depth": 10, "width": 8}, pretrained=False
        ).eval()
        maps = extractor(torch.rand(1, 1, 3 * divisor, 3 * divisor)).values()
        assert [3 * divisor / m.shape[-1] for m in maps] == expected
        # Half the divisor is not enough: the pooled level rounds up and its stride drifts.
        maps = extractor(torch.rand(1, 1, 3 * divisor // 2, 3 * divisor // 2)).values()
        assert [3 * divisor / 2 / m.shape[-1] for m in maps] != expected


def test_the_pretrained_backbone_carries_imagenet_weights_and_its_normalisation():
    from medtailor.train.weights import create_pretrained

    extractor = feature_extractor(2, TIMM_CFG)
    reference = create_pretrained("efficientnet_lite0", "imagenet", in_chans=1, num_classes=0)
    torch.testing.assert_close(extractor.body.conv_stem.weight, reference.conv_stem.weight)
    assert float(extractor.mean) == 0.5 and float(extractor.std) == 0.5
    scratch = feature_extractor(2, TIMM_CFG, pretrained=False)
    assert not torch.equal(scratch.body.conv_stem.weight, reference.conv_stem.weight)


def test_a_timm_detector_trains_one_step_and_reloads_from_its_checkpoint(tmp_path):
    torch.manual_seed(0)
    detector = build_detector(2, TIMM_CFG, SELECTION)
    image = torch.rand(1, 128, 128)
    target = {"boxes": torch.tensor([[30.0, 40.0, 50.0, 60.0]]), "labels": torch.zeros(1).long()}
    detector.train()
    losses = detector([image], [target])
    (losses["classification"] + losses["box_regression"]).backward()
    assert detector.network.feature_extractor.body.conv_stem.weight.grad is not None
    torch.save({"state_dict": detector.state_dict()}, tmp_path / "d.pt")
    # detect rebuilds it without the pre-trained weights, then loads the checkpoint.
    again = build_detector(2, TIMM_CFG, SELECTION, pretrained=False)
    again.load_state_dict(torch.load(tmp_path / "d.pt", weights_only=True)["state_dict"])
    detector.eval()
    again.eval()
    with torch.no_grad():
        a = detector.network(image[None])
        b = again.network(image[None])
    for key in a:
        for x, y in zip(a[key], b[key], strict=True):
            torch.testing.assert_close(x, y)


def test_frozen_batch_norm_keeps_the_pretrained_statistics_through_training():
    """frozen_batch_norm: a training step moves the convolutions but not one batch-norm
    statistic or affine term of the backbone (they stay ImageNet's), and a checkpoint of
    the frozen detector loads back into one rebuilt from its configuration."""
    torch.manual_seed(0)
    cfg = {**TIMM_CFG, "frozen_batch_norm": True}
    detector = build_detector(2, cfg, SELECTION)
    body = detector.network.feature_extractor.body
    frozen = {k: v.clone() for k, v in body.state_dict().items() if ".bn" in k}
    assert frozen and not any(k.endswith("num_batches_tracked") for k in frozen)
    stem = body.conv_stem.weight.detach().clone()
    optimizer = torch.optim.SGD(detector.parameters(), lr=0.1)
    detector.train()
    target = {"boxes": torch.tensor([[30.0, 40.0, 50.0, 60.0]]), "labels": torch.zeros(1).long()}
    losses = detector([torch.rand(1, 128, 128)], [target])
    (losses["classification"] + losses["box_regression"]).backward()
    optimizer.step()
    assert not torch.equal(body.conv_stem.weight, stem)
    for key, value in body.state_dict().items():
        if key in frozen:
            assert torch.equal(value, frozen[key]), key
    build_detector(2, cfg, SELECTION, pretrained=False).load_state_dict(detector.state_dict())


@pytest.mark.parametrize(
    "cfg", [TIMM_CFG, {**TIMM_CFG, "backbone": "resnet"}], ids=["timm", "resnet"]
)
def test_the_backbone_learns_at_its_share_of_the_learning_rate(cfg):
    """backbone_learning_rate_factor: every parameter is in exactly one optimiser group, the
    backbone's at the factor times the learning rate; after one AdamW step of equal
    gradients the backbone's weights moved by the factor times the heads' move."""
    cfg = {**cfg, "backbone_depth": 10, "width": 8, "backbone_init": "scratch"}
    detector = build_detector(2, cfg, SELECTION)
    body = detector.network.feature_extractor.body
    groups = parameter_groups(detector, 1e-3, 0.1)
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-3])
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in detector.parameters())
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in body.parameters()}
    head = detector.network.classification_head.cls_logits.weight
    stem = next(body.parameters())
    before = head.detach().clone(), stem.detach().clone()
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    for parameter in detector.parameters():
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()  # Adam's first step moves each weight by its group's lr
    torch.testing.assert_close(before[0] - head.detach(), torch.full_like(head, 1e-3))
    torch.testing.assert_close(before[1] - stem.detach(), torch.full_like(stem, 1e-4))


@pytest.mark.parametrize("loss", ["smooth_l1", "giou"])
def test_the_box_regression_loss_is_the_configured_one(loss):
    """box_regression_loss: GIoU compares decoded boxes (the overlap the IoU rule scores),
    smooth L1 encoded offsets; both give a finite loss to train on."""
    from monai.losses import BoxGIoULoss

    detector = build_detector(2, {**TIMM_CFG, "box_regression_loss": loss}, SELECTION)
    expected = BoxGIoULoss if loss == "giou" else torch.nn.SmoothL1Loss
    assert isinstance(detector.box_loss_func, expected)
    assert detector.encode_gt == (loss == "smooth_l1")
    assert detector.decode_pred == (loss == "giou")
    detector.train()
    target = {"boxes": torch.tensor([[30.0, 40.0, 50.0, 60.0]]), "labels": torch.zeros(1).long()}
    losses = detector([torch.rand(1, 128, 128)], [target])
    assert torch.isfinite(losses["box_regression"]) and losses["box_regression"] > 0
    with pytest.raises(ValueError, match="box_regression_loss 'iou'"):
        build_detector(2, {**TIMM_CFG, "box_regression_loss": "iou"}, SELECTION)


def test_volumes_keep_the_resnet_and_a_timm_volume_backbone_is_refused(repo_params):
    from medtailor.config import cross_field_errors

    with pytest.raises(ValueError, match="timm backbones are 2D"):
        feature_extractor(3, TIMM_CFG)
    params = copy.deepcopy(repo_params)
    params["detector"]["volume"]["backbone"] = "efficientnet_lite0"
    assert any("detector.volume.backbone" in e for e in cross_field_errors(params))


@pytest.mark.slow
def test_auto_anchors_and_crop_are_planned_written_and_carried_by_the_checkpoint(
    detection_run, tmp_path
):
    from medtailor.config import validate_params
    from medtailor.detect.training import load_checkpoint, run_train_detector

    params = copy.deepcopy(detection_run["params"])
    params["detector"]["radiograph"].update(
        {"base_anchor_shapes": "auto", "patch_size": "auto", "epochs": 1, "validate_every": 1}
    )
    validate_params(params)  # auto is a valid crop size
    params["detector"]["volume"]["epochs"] = 1
    summary = run_train_detector(
        detection_run["root"] / "resample", detection_run["split_csv"], tmp_path, params
    )
    plan = json.loads((tmp_path / "radiograph_plan.json").read_text())
    assert not (tmp_path / "volume_plan.json").exists()  # given shapes stay given
    checkpoint = load_checkpoint(tmp_path / "radiograph.pt")
    assert checkpoint["config"]["base_anchor_shapes"] == plan["base_anchor_shapes"]
    assert checkpoint["config"]["returned_layers"] == plan["returned_layers"]
    assert checkpoint["config"]["patch_size"] == plan["patch_size"]
    assert plan["divisor"] == input_divisor(plan["returned_layers"])
    assert all(side % plan["divisor"] == 0 for side in plan["patch_size"])
    assert summary["radiograph_anchor_mean_best_iou"] == plan["mean_best_iou"]
    # The synthetic lesions (roughly 28 to 49 pixels) are near-square ellipses.
    assert 20 <= plan["box_size_percentiles"]["50"] <= 60


def ellipse_image(shape=(200, 220), centre=(100.0, 90.0), semi=(24.0, 12.0)) -> np.ndarray:
    x, y = np.meshgrid(*(np.arange(n) + 0.5 for n in shape), indexing="ij")
    inside = ((x - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2 <= 1
    return inside.astype(np.float32)


def test_scaled_and_rotated_crops_move_each_box_with_its_lesion():
    from medtailor.detect.augment import Augmentation, training_crop

    centre, semi = np.array([100.0, 90.0]), np.array([24.0, 12.0])
    image = ellipse_image(centre=centre, semi=semi)
    box = np.concatenate([centre - semi, centre + semi])[None]
    aug = Augmentation(scale_range=(0.7, 1.4), rotation_degrees=30.0)
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(30):
        crop, boxes = training_crop(image, box, (96, 96), rng, 1.0, aug)
        assert crop.shape == (96, 96) and crop.dtype == np.float32
        pixels = np.argwhere(crop > 0.5)
        touches_border = pixels.min() == 0 or pixels.max() == 95
        if len(boxes) == 0 or touches_border:
            continue
        # The box is the lesion's bounding box in the warped crop (the ellipse's bounding
        # box under rotation is exact), to within interpolation.
        seen = np.concatenate([pixels.min(0), pixels.max(0) + 1])
        np.testing.assert_allclose(boxes[0], seen, atol=1.5)
        checked += 1
    assert checked >= 15


def test_an_identity_warp_is_the_plain_crop():
    from medtailor.detect.augment import crop_matrix, warp_image

    image = np.random.default_rng(1).random((60, 70)).astype(np.float32)
    start, size = np.array([10, 20]), np.array([32, 40])
    warped = warp_image(image, start + size / 2, crop_matrix(2, 1.0, 0.0), size)
    np.testing.assert_allclose(warped, image[10:42, 20:60], atol=1e-6)
    # Magnified twice about the crop's centre (26, 40): output voxel (8, 10), centred at
    # (8.5, 10.5), shows image point (26, 40) + ((8.5, 10.5) - (16, 20)) / 2 = (22.25, 35.25),
    # i.e. between voxels 21-22 and 34-35 (centres at +0.5) with weights 1/4, 3/4.
    zoomed = warp_image(image, start + size / 2, crop_matrix(2, 2.0, 0.0), size)
    weights = np.array([0.25, 0.75])
    assert zoomed[8, 10] == pytest.approx(weights @ image[21:23, 34:36] @ weights, abs=1e-5)


def test_training_stops_early_when_validation_recall_stops_rising(tmp_path, monkeypatch):
    from medtailor.detect import training
    from medtailor.detect.data import DetectionImage

    image = ellipse_image((64, 64), (32.0, 30.0), (8.0, 6.0))
    item = DetectionImage("a", image, np.array([[24.0, 24.0, 40.0, 36.0]]), np.eye(3))
    cfg = {
        "backbone": "resnet",
        "backbone_depth": 10,
        "width": 4,
        "fpn_channels": 8,
        "returned_layers": [1, 2],
        "base_anchor_shapes": [[12, 12]],
        "patch_size": [64, 64],
        "crops_per_image": 1,
        "lesion_crop_fraction": 1.0,
        "batch_size": 2,
        "epochs": 10,
        "learning_rate": 0.001,
        "validate_every": 1,
        "early_stopping_patience": 2,
        "augment": {"scale_range": [0.9, 1.1], "rotation_degrees": 5.0, "noise_std": 0.02},
    }
    params = {
        "seed": 0,
        "detector": {"radiograph": cfg},
        "patches": {"min_score": 10, "positive_iou": 0.5},
    }
    recalls = iter([0.25, 0.5, 0.5, 0.5, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75])
    monkeypatch.setattr(training, "validation_recall", lambda *args: next(recalls))
    history = training.train_kind(
        "radiograph", [item, item], [item], params, tmp_path, lambda m, s: None
    )
    # Rises at epochs 1 and 2, flat at 3 and 4: two validations without a rise stop it.
    assert history["radiograph_epochs_run"] == 4
    assert history["radiograph_best_val_recall"] == 0.5
    assert training.load_checkpoint(tmp_path / "radiograph.pt")["epoch"] == 4  # ties: later wins
