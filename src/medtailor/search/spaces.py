"""Search spaces: elastic MBConv networks whose every member is a timm model.

A space is one decorated function (``@register_space``) returning an ``ElasticSpace``:
fixed stem, first block and head, and elastic stages of inverted-residual blocks. Its
genes, in this order (each a ``nevergrad`` ``TransitionChoice`` over its values):

1. ``k<s>.<b>``: kernel size of block b of elastic stage s (only blocks with a choice);
2. ``e<s>.<b>``: expand ratio of that block;
3. ``d<s>``: depth of stage s: the stage runs its first d blocks (only stages with a choice).

A genotype is the tuple of gene values. Genes of blocks beyond their stage's depth build
nothing, so ``canonical`` replaces them with None: two genotypes that build the same
network share one canonical form and one ``key`` (and are trained once).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

Genotype = tuple[int | None, ...]


@dataclass(frozen=True)
class Stage:
    """An elastic stage: up to ``max_depth`` inverted-residual blocks."""

    channels: int
    stride: int
    max_depth: int
    kernels: tuple[int, ...]  # per block: the kernel sizes allowed (largest = pre-trained)
    expands: tuple[int, ...]
    depths: tuple[int, ...]
    activation: str = ""  # "" (the network's) or "nre" (ReLU)
    squeeze_excite: bool = False


@dataclass(frozen=True)
class Gene:
    name: str
    choices: tuple[int, ...]


@dataclass(frozen=True)
class ElasticSpace:
    """A family of timm EfficientNet/MobileNetV3 networks and where their weights come from.

    ``first_blocks`` and ``head_blocks`` are fixed timm block strings around the elastic
    stages; ``network`` is the timm class and ``network_kwargs`` its fixed arguments.
    ``supernet`` loads the weights every member is cut from (see ``medtailor.search.supernet``).
    """

    name: str
    stages: tuple[Stage, ...]
    first_blocks: tuple[tuple[str, ...], ...]
    head_blocks: tuple[tuple[str, ...], ...]
    network: Callable[..., nn.Module]
    network_kwargs: dict[str, Any]
    data_config: dict[str, Any]
    reference: dict[str, Sequence[int | None]]  # ks, e (per block), d (per stage)
    supernet: Callable[[str | None], Any]
    description: str = ""
    genes: tuple[Gene, ...] = field(init=False)

    def __post_init__(self) -> None:
        kernels, expands, depths = [], [], []
        for s, stage in enumerate(self.stages):
            for b in range(stage.max_depth):
                if len(stage.kernels) > 1:
                    kernels.append(Gene(f"k{s}.{b}", stage.kernels))
                if len(stage.expands) > 1:
                    expands.append(Gene(f"e{s}.{b}", stage.expands))
            if len(stage.depths) > 1:
                depths.append(Gene(f"d{s}", stage.depths))
        object.__setattr__(self, "genes", tuple(kernels + expands + depths))

    # -- genotypes -------------------------------------------------------------------------
    def _values(self, genotype: Sequence[int | None]) -> dict[str, int | None]:
        if len(genotype) != len(self.genes):
            raise ValueError(
                f"{self.name}: a genotype has {len(self.genes)} genes, got {len(genotype)}"
            )
        return dict(zip((g.name for g in self.genes), genotype, strict=True))

    def _depths(self, values: dict[str, int | None]) -> list[int]:
        return [int(values.get(f"d{s}") or st.depths[0]) for s, st in enumerate(self.stages)]

    def check(self, genotype: Sequence[int | None]) -> None:
        """Every gene of an active block has one of its values (inactive ones may be None)."""
        values = self._values(genotype)
        depths = self._depths(values)
        for gene in self.genes:
            value = values[gene.name]
            if value is None and not self._inactive(gene, depths):
                raise ValueError(f"{self.name}: gene {gene.name} of an active block is None")
            if value is not None and value not in gene.choices:
                raise ValueError(
                    f"{self.name}: gene {gene.name} = {value}, allowed {list(gene.choices)}"
                )

    @staticmethod
    def _inactive(gene: Gene, depths: list[int]) -> bool:
        if gene.name[0] == "d":
            return False
        stage, block = (int(v) for v in gene.name[1:].split("."))
        return block >= depths[stage]

    def decode(self, genotype: Sequence[int | None]) -> list[list[tuple[int, int]]]:
        """Per stage, the (kernel, expand) of every block it runs."""
        self.check(genotype)
        values = self._values(genotype)
        return [
            [
                (
                    int(values.get(f"k{s}.{b}") or stage.kernels[0]),
                    int(values.get(f"e{s}.{b}") or stage.expands[0]),
                )
                for b in range(depth)
            ]
            for s, (stage, depth) in enumerate(zip(self.stages, self._depths(values), strict=True))
        ]

    def canonical(self, genotype: Sequence[int | None]) -> Genotype:
        """The genotype with the genes of inactive blocks set to None."""
        self.check(genotype)
        values = self._values(genotype)
        depths = self._depths(values)
        return tuple(
            None if self._inactive(g, depths) else int(values[g.name])  # type: ignore[arg-type]
            for g in self.genes
        )

    def key(self, genotype: Sequence[int | None]) -> str:
        """A short stable name of the network a genotype builds (its canonical form)."""
        return "-".join("x" if v is None else str(v) for v in self.canonical(genotype))

    def genotype_of(
        self, ks: Sequence[int | None], e: Sequence[int | None], d: Sequence[int]
    ) -> Genotype:
        """Assemble a genotype from per-block kernels and expands and per-stage depths
        (OFA's ``ks``, ``e``, ``d`` lists; None for a block that is inactive)."""
        blocks = [(s, b) for s, stage in enumerate(self.stages) for b in range(stage.max_depth)]
        by_block = {blk: (k, x) for blk, k, x in zip(blocks, ks, e, strict=True)}
        values = []
        for gene in self.genes:
            if gene.name[0] == "d":
                values.append(int(d[int(gene.name[1:])]))
                continue
            s, b = (int(v) for v in gene.name[1:].split("."))
            kernel, expand = by_block[(s, b)]
            value = kernel if gene.name[0] == "k" else expand
            # An inactive block's gene still needs a value for the optimiser: its first one.
            values.append(gene.choices[0] if value is None else int(value))
        return tuple(values)

    def reference_genotype(self) -> Genotype:
        return self.genotype_of(self.reference["ks"], self.reference["e"], self.reference["d"])

    def largest_genotype(self) -> Genotype:
        return tuple(max(g.choices) for g in self.genes)

    # -- networks --------------------------------------------------------------------------
    def arch_def(self, genotype: Sequence[int | None]) -> list[list[str]]:
        """timm block strings (``decode_arch_def``) of the network a genotype builds."""
        arch = [list(b) for b in self.first_blocks]
        for stage, blocks in zip(self.stages, self.decode(genotype), strict=True):
            strings = []
            for index, (kernel, expand) in enumerate(blocks):
                stride = stage.stride if index == 0 else 1
                text = f"ir_r1_k{kernel}_s{stride}_e{expand}_c{stage.channels}"
                text += "_se0.25" if stage.squeeze_excite else ""
                text += f"_{stage.activation}" if stage.activation else ""
                strings.append(text)
            arch.append(strings)
        return arch + [list(b) for b in self.head_blocks]

    def create_model(
        self,
        genotype: Sequence[int | None],
        pretrained: bool,
        num_classes: int = 0,
        in_chans: int = 3,
        supernet_file: str | None = None,
    ) -> nn.Module:
        """The timm network of ``genotype``; with ``pretrained``, its weights are cut from
        the space's supernet (``supernet_file``, or its default place; see
        ``medtailor.search.supernet``)."""
        from timm.models._efficientnet_builder import decode_arch_def

        model = self.network(
            block_args=decode_arch_def(self.arch_def(genotype)),
            num_classes=num_classes,
            in_chans=in_chans,
            **self.network_kwargs,
        )
        # timm reads mean/std (and so our Classifier's normalisation) from pretrained_cfg.
        model.pretrained_cfg = model.default_cfg = dict(self.data_config)
        if pretrained:
            from medtailor.search.supernet import extract_subnet

            state = extract_subnet(self, self.supernet(supernet_file), genotype, in_chans)
            if not num_classes:
                state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
            missing, unexpected = model.load_state_dict(state, strict=False)
            left = [k for k in missing if not k.startswith("classifier.")]
            if left or unexpected:
                raise RuntimeError(
                    f"{self.name}: extracted weights do not fit the network "
                    f"(missing {left[:5]}, unexpected {unexpected[:5]})"
                )
        return model


SPACES: dict[str, Callable[[], ElasticSpace]] = {}
_BUILT: dict[str, ElasticSpace] = {}


def register_space(builder: Callable[[], ElasticSpace]) -> Callable[[], ElasticSpace]:
    SPACES[builder.__name__] = builder
    return builder


def is_space(name: str) -> bool:
    return name in SPACES


def create_space(name: str) -> ElasticSpace:
    if name not in SPACES:
        raise ValueError(f"unknown search space {name!r}; registered: {sorted(SPACES)}")
    if name not in _BUILT:
        _BUILT[name] = SPACES[name]()
    return _BUILT[name]


# -- the spaces ----------------------------------------------------------------------------


def _ofa_space(name: str, width: float) -> ElasticSpace:
    """Once-for-All MobileNetV3 (Cai et al., ICLR 2020), as the official supernets
    ``ofa_mbv3_d234_e346_k357_w{1.0,1.2}`` define it."""
    from functools import partial

    from timm.layers import make_divisible
    from timm.models._efficientnet_blocks import SqueezeExcite
    from timm.models.mobilenetv3 import MobileNetV3

    from medtailor.search.supernet import ofa_supernet

    def width_of(base: int) -> int:
        return make_divisible(base * width, 8)

    stage_spec = [  # base width, stride, activation, SE (OFA's stride/act/se_stages)
        (24, 2, "nre", False),
        (40, 2, "nre", True),
        (80, 2, "", False),
        (112, 1, "", True),
        (160, 2, "", True),
    ]
    stages = tuple(
        Stage(width_of(c), s, 4, (3, 5, 7), (3, 4, 6), (2, 3, 4), act, se)
        for c, s, act, se in stage_spec
    )
    stem = width_of(16)
    se_layer = partial(
        SqueezeExcite,
        gate_layer="hard_sigmoid",
        force_act_layer=nn.ReLU,
        rd_round_fn=make_divisible,
    )
    reference = {  # the ImageNet subnet flops@595M_top1@80.0_finetune@75 (w1.2, 236 px)
        "ks": [3, 5, 3, None, 5, 5, 3, 5, 7, 5, 3, 5, 3, 5, 7, 3, 3, 3, 5, 3],
        "e": [3, 4, 3, None, 4, 4, 6, 3, 6, 6, 3, 4, 6, 6, 6, 4, 6, 6, 6, 3],
        "d": [3, 4, 4, 4, 4],
    }
    return ElasticSpace(
        name=name,
        stages=stages,
        first_blocks=((f"ds_r1_k3_s1_e1_c{width_of(16)}_nre",),),
        head_blocks=((f"cn_r1_k1_s1_c{width_of(960)}",),),
        network=MobileNetV3,
        network_kwargs={
            "stem_size": stem,
            "fix_stem": True,
            "num_features": width_of(1280),
            "head_bias": False,
            "act_layer": nn.Hardswish,
            "se_layer": se_layer,
        },
        data_config={
            "input_size": (3, 224, 224),
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
            "interpolation": "bilinear",
            "crop_pct": 0.875,
        },
        reference=reference,
        supernet=partial(ofa_supernet, width),
        description=f"Once-for-All MobileNetV3 w{width}: 5 stages x 4 blocks, kernel "
        "{3,5,7}, expand {3,4,6}, depth {2,3,4}",
    )


@register_space
def ofa_mbv3_w12() -> ElasticSpace:
    return _ofa_space("ofa_mbv3_w12", 1.2)


@register_space
def ofa_mbv3_w10() -> ElasticSpace:
    return _ofa_space("ofa_mbv3_w10", 1.0)


@register_space
def lite0_elastic() -> ElasticSpace:
    """An elastic space around the real ImageNet EfficientNet-Lite0 (offline weights).

    Lite0's six inverted-residual stages (after its expansion-free first block) become
    elastic: per block a kernel no larger than the pre-trained one (k3 blocks keep 3, k5
    blocks choose 3 or 5: centre crop), expand ratio 3, 4 or 6 (the most important
    channels, by the L1 norm of the projection weights, as OFA sorts them), per stage a
    depth from 1 to its pre-trained depth (the first blocks kept). 29 genes: 9 kernels,
    15 expand ratios, 5 depths (the last stage has one block). Its largest member is Lite0.
    """
    from functools import partial

    from timm.models.efficientnet import EfficientNet

    from medtailor.search.supernet import lite0_supernet
    from medtailor.train.weights import LITE_MEAN, LITE_STD

    spec = [  # Lite0: channels, stride, pre-trained depth, pre-trained kernel
        (24, 2, 2, 3),
        (40, 2, 2, 5),
        (80, 2, 3, 3),
        (112, 1, 3, 5),
        (192, 2, 4, 5),
        (320, 1, 1, 3),
    ]
    stages = tuple(
        Stage(c, s, d, (3, 5) if k == 5 else (3,), (3, 4, 6), tuple(range(1, d + 1)))
        for c, s, d, k in spec
    )
    return ElasticSpace(
        name="lite0_elastic",
        stages=stages,
        first_blocks=(("ds_r1_k3_s1_e1_c16",),),
        head_blocks=(),
        network=EfficientNet,
        network_kwargs={
            "stem_size": 32,
            "fix_stem": True,
            "num_features": 1280,
            "act_layer": nn.ReLU6,
        },
        data_config={  # Lite0's TensorFlow weights were trained on (x - 127) / 128
            "input_size": (3, 224, 224),
            "mean": LITE_MEAN,
            "std": LITE_STD,
            "interpolation": "bicubic",
            "crop_pct": 0.875,
        },
        reference={
            "ks": [k for _, _, d, k in spec for _ in range(d)],
            "e": [6] * sum(d for _, _, d, _ in spec),
            "d": [d for _, _, d, _ in spec],
        },
        supernet=partial(lite0_supernet),
        description="EfficientNet-Lite0 made elastic: kernel <= pre-trained, expand {3,4,6}, "
        "depth 1..pre-trained",
    )
