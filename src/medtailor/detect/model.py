"""MONAI RetinaNet (ResNet-FPN backbone) for 2D radiographs and 3D volumes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.networks.blocks.backbone_fpn_utils import BackboneWithFPN
from monai.networks.blocks.feature_pyramid_network import LastLevelMaxPool
from monai.networks.nets import resnet

RESNET_LAYERS = {10: [1, 1, 1, 1], 18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


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
    spatial_dims: int, cfg: Mapping[str, Any], selection: Mapping[str, Any]
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
    extractor = BackboneWithFPN(
        backbone,
        return_layers={f"layer{k}": str(v) for v, k in enumerate(returned_layers)},
        in_channels_list=[width * 2 ** (k - 1) for k in returned_layers],
        out_channels=int(cfg["fpn_channels"]),
        spatial_dims=spatial_dims,
        extra_blocks=LastLevelMaxPool(spatial_dims),
    )
    # Padding must survive every downsampling: conv1 (2), max-pool (2) and 2 per stage.
    size_divisible = 2 * 2 * 2 ** max(returned_layers) * 2
    network = RetinaNet(
        spatial_dims=spatial_dims,
        num_classes=1,
        num_anchors=anchors.num_anchors_per_location()[0],
        feature_extractor=extractor,
        size_divisible=size_divisible,
    )
    detector = RetinaNetDetector(network=network, anchor_generator=anchors, debug=False)
    detector.set_target_keys(box_key="boxes", label_key="labels")
    detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
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


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
