"""MONAI RetinaNet for 2D radiographs and 3D volumes, on a feature pyramid over MONAI's
ResNet (2D or 3D, from scratch) or over any timm backbone (2D, pre-trained or not)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.losses import BoxGIoULoss
from monai.networks.blocks.backbone_fpn_utils import BackboneWithFPN
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from monai.networks.nets import resnet
from torch import nn

from medtailor.detect.planning import input_divisor

RESNET_LAYERS = {10: [1, 1, 1, 1], 18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}
MONAI_RESNET = "resnet"


class TimmFeaturePyramid(nn.Module):
    """A timm backbone (``features_only``) under MONAI's feature pyramid, for RetinaNet.

    Stage k of ``returned_layers`` is timm's feature k (stride ``2 ** (k + 1)``, as MONAI's
    ResNet layer k). Grayscale input goes through timm's ``in_chans=1`` (the pre-trained
    first convolution summed over RGB) after the weights' own normalisation of [0, 1]
    intensities, so a pre-trained backbone sees what it was trained on.
    """

    def __init__(
        self,
        name: str,
        init: str,
        returned_layers: list[int],
        out_channels: int,
        frozen_batch_norm: bool = False,
    ):
        super().__init__()
        import timm
        from timm.utils.model import freeze_batch_norm_2d

        from medtailor.train.weights import create_pretrained

        options = {"features_only": True, "out_indices": tuple(returned_layers), "in_chans": 1}
        if init == "scratch":
            self.body = timm.create_model(name, pretrained=False, **options)
        else:
            self.body = create_pretrained(name, init, **options)
        if frozen_batch_norm:
            # Detection batches are a few crops: their statistics would overwrite the
            # pre-trained ones with noise (torchvision and detectron2 freeze them likewise).
            self.body = freeze_batch_norm_2d(self.body)
        cfg = self.body.pretrained_cfg
        self.register_buffer("mean", torch.tensor(float(sum(cfg["mean"]) / len(cfg["mean"]))))
        self.register_buffer("std", torch.tensor(float(sum(cfg["std"]) / len(cfg["std"]))))
        self.strides = list(self.body.feature_info.reduction())
        self.fpn = FeaturePyramidNetwork(
            spatial_dims=2,
            in_channels_list=list(self.body.feature_info.channels()),
            out_channels=out_channels,
            extra_blocks=LastLevelMaxPool(2),
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body((x - self.mean) / self.std)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


def feature_extractor(
    spatial_dims: int, cfg: Mapping[str, Any], pretrained: bool = True
) -> nn.Module:
    """The detector's backbone under a feature pyramid of ``fpn_channels`` channels
    (``pretrained=False`` builds the architecture only, to load a checkpoint into)."""
    returned_layers = [int(v) for v in cfg["returned_layers"]]
    name = str(cfg.get("backbone", MONAI_RESNET))
    if name != MONAI_RESNET:
        if spatial_dims != 2:
            raise ValueError(
                f"detector backbone {name!r}: timm backbones are 2D; a volume detector uses "
                f"backbone: {MONAI_RESNET} (no 3D ImageNet weights exist)"
            )
        init = str(cfg.get("backbone_init", "imagenet")) if pretrained else "scratch"
        return TimmFeaturePyramid(
            name,
            init,
            returned_layers,
            int(cfg["fpn_channels"]),
            bool(cfg.get("frozen_batch_norm", False)),
        )
    width = int(cfg["width"])
    backbone = resnet.ResNet(
        block=resnet.ResNetBlock,
        layers=RESNET_LAYERS[int(cfg["backbone_depth"])],
        block_inplanes=[width, 2 * width, 4 * width, 8 * width],
        n_input_channels=1,
        conv1_t_stride=2,
        conv1_t_size=7,
        spatial_dims=spatial_dims,
    )
    # MONAI's resnet_fpn_feature_extractor fixes the pyramid at 256 channels; a narrower
    # pyramid (fpn_channels) keeps the heads affordable on a CPU.
    return BackboneWithFPN(
        backbone,
        return_layers={f"layer{k}": str(v) for v, k in enumerate(returned_layers)},
        in_channels_list=[width * 2 ** (k - 1) for k in returned_layers],
        out_channels=int(cfg["fpn_channels"]),
        spatial_dims=spatial_dims,
        extra_blocks=LastLevelMaxPool(spatial_dims),
    )


def validation_selection(min_score: float) -> dict[str, float]:
    """Candidate selection while training chooses its checkpoint: fixed, so that the
    inference settings ``detect`` reads (``detector.min_candidate_score`` etc.) never change
    which detector is trained. Only candidates above ``patches.min_score`` count there."""
    return {
        "min_candidate_score": min_score,
        "nms_iou": 0.5,
        "max_candidates_per_image": 100,
        "sliding_window_overlap": 0.25,
    }


def build_detector(
    spatial_dims: int,
    cfg: Mapping[str, Any],
    selection: Mapping[str, Any],
    pretrained: bool = True,
) -> RetinaNetDetector:
    """A one-class RetinaNet: architecture and sliding-window size from ``cfg``
    (``detector.<kind>``, stored in each checkpoint), candidate selection from
    ``selection`` (``detector.min_candidate_score``, ``nms_iou``,
    ``max_candidates_per_image``, ``sliding_window_overlap``)."""
    returned_layers = [int(v) for v in cfg["returned_layers"]]
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=[2**level for level in range(len(returned_layers) + 1)],
        base_anchor_shapes=[[float(v) for v in shape] for shape in cfg["base_anchor_shapes"]],
    )
    extractor = feature_extractor(spatial_dims, cfg, pretrained)
    network = RetinaNet(
        spatial_dims=spatial_dims,
        num_classes=1,
        num_anchors=anchors.num_anchors_per_location()[0],
        feature_extractor=extractor,
        size_divisible=input_divisor(returned_layers),
    )
    detector = RetinaNetDetector(network=network, anchor_generator=anchors, debug=False)
    detector.set_target_keys(box_key="boxes", label_key="labels")
    detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
    set_box_regression_loss(detector, str(cfg.get("box_regression_loss", "smooth_l1")))
    detector.set_hard_negative_sampler(
        batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16
    )
    detector.set_box_selector_parameters(
        score_thresh=float(selection["min_candidate_score"]) / 100.0,
        topk_candidates_per_level=1000,
        nms_thresh=float(selection["nms_iou"]),
        detections_per_img=int(selection["max_candidates_per_image"]),
    )
    detector.set_sliding_window_inferer(
        roi_size=[int(v) for v in cfg["patch_size"]],
        overlap=float(selection["sliding_window_overlap"]),
        sw_batch_size=1,
        mode="constant",
        device="cpu",
    )
    return detector


def parameter_groups(
    detector: RetinaNetDetector, learning_rate: float, backbone_factor: float
) -> list[dict[str, Any]]:
    """Optimiser groups: the backbone at ``learning_rate * backbone_factor``, the feature
    pyramid and heads (always trained from scratch) at ``learning_rate``.

    A factor below 1 fine-tunes pre-trained features gently while the new layers learn
    at full speed (the practice of DETR and detectron2-style fine-tuning)."""
    backbone = list(detector.network.feature_extractor.body.parameters())
    ids = {id(p) for p in backbone}
    rest = [p for p in detector.parameters() if id(p) not in ids]
    return [
        {"params": backbone, "lr": learning_rate * backbone_factor},
        {"params": rest, "lr": learning_rate},
    ]


def set_box_regression_loss(detector: RetinaNetDetector, name: str) -> None:
    """``smooth_l1`` on encoded offsets (MONAI's default) or ``giou`` on decoded boxes.

    GIoU optimises box overlap directly, the quantity the patch stage thresholds
    (IoU > 0.5 makes a candidate positive), where smooth L1 weighs each coordinate's
    offset alike whatever the box size."""
    if name == "giou":
        detector.set_box_regression_loss(
            BoxGIoULoss(reduction="mean"), encode_gt=False, decode_pred=True
        )
    elif name == "smooth_l1":
        detector.set_box_regression_loss(
            nn.SmoothL1Loss(beta=1.0 / 9, reduction="mean"), encode_gt=True, decode_pred=False
        )
    else:
        raise ValueError(f"detector box_regression_loss {name!r}: expected smooth_l1 or giou")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
