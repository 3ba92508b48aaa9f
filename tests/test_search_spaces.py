"""Search spaces, subnet extraction and the evolution strategy (no training here)."""

from __future__ import annotations

import copy
import random
import shutil
import subprocess

import pytest
import torch

from medtailor.complexity import count_macs
from medtailor.search.evolution import (
    HistoryMismatch,
    SearchPlan,
    ask_generation,
    create_optimizer,
    replay,
)
from medtailor.search.spaces import create_space
from medtailor.search.supernet import extract_subnet, ofa_supernet, ofa_to_timm, reduce_kernel
from medtailor.train.weights import PretrainedWeightsMissing


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["ofa_mbv3_w12", "ofa_mbv3_w10"])
def test_ofa_spaces_have_45_genes_of_3_values_and_a_45_dimensional_optimizer(name):
    space = create_space(name)
    assert len(space.genes) == 45
    assert all(len(g.choices) == 3 for g in space.genes)
    assert [g.name[0] for g in space.genes] == ["k"] * 20 + ["e"] * 20 + ["d"] * 5
    optimizer = create_optimizer(space, SearchPlan(budget=10, workers=2, seed=1))
    assert optimizer.dimension == 45


def test_canonical_keys_ignore_the_genes_of_inactive_blocks():
    space = create_space("ofa_mbv3_w12")
    names = [g.name for g in space.genes]
    genotype = list(space.reference_genotype())
    assert genotype[names.index("d0")] == 3  # stage 0 runs 3 of its 4 blocks
    other = list(genotype)
    other[names.index("k0.3")] = 7  # block 0.3 is inactive: the same network
    other[names.index("e0.3")] = 6
    assert space.key(other) == space.key(genotype)
    assert space.canonical(other)[names.index("k0.3")] is None
    active = list(genotype)
    active[names.index("k0.2")] = 7
    assert space.key(active) != space.key(genotype)
    deeper = list(other)
    deeper[names.index("d0")] = 4  # now block 0.3 runs, and its genes matter
    assert space.key(deeper) != space.key(genotype)


def randomised_ofa_supernet(width: float, seed: int = 0):
    """An OFA supernet (the reference implementation) with random weights, random kernel
    transformation matrices and random batch-norm statistics."""
    ofa = pytest.importorskip("ofa.imagenet_classification.elastic_nn.networks")
    torch.manual_seed(seed)
    net = ofa.OFAMobileNetV3(
        width_mult=width, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4]
    )
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            noise = torch.randn_like(parameter) * 0.1
            if name.endswith("_matrix"):
                noise += torch.eye(parameter.shape[0])
            parameter.copy_(noise)
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return net.eval()


def ofa_lists(space, genotype):
    """OFA's ks, e, d lists of a genotype (inactive blocks get OFA's values, unused)."""
    values = dict(zip((g.name for g in space.genes), genotype, strict=True))
    blocks = [(s, b) for s in range(5) for b in range(4)]
    ks = [values[f"k{s}.{b}"] for s, b in blocks]
    e = [values[f"e{s}.{b}"] for s, b in blocks]
    return ks, e, [values[f"d{s}"] for s in range(5)]


def test_an_extracted_ofa_subnet_computes_what_the_supernet_and_the_ofa_package_compute():
    net = randomised_ofa_supernet(1.2)
    space = create_space("ofa_mbv3_w12")
    supernet = ofa_to_timm(net.state_dict())
    rng = random.Random(3)
    genotypes = [space.reference_genotype()] + [
        tuple(rng.choice(g.choices) for g in space.genes) for _ in range(2)
    ]
    x = torch.randn(2, 3, 72, 72)
    for genotype in genotypes:
        ks, e, d = ofa_lists(space, genotype)
        net.set_active_subnet(ks=ks, e=e, d=d)
        ofa_subnet = net.get_active_subnet(preserve_weight=True).eval()
        model = space.create_model(genotype, pretrained=False, num_classes=1000).eval()
        model.load_state_dict(extract_subnet(space, supernet, genotype))
        with torch.no_grad():
            ours, theirs, reference = model(x), net(x), ofa_subnet(x)
        assert theirs.abs().mean() > 0.01  # a real signal, not a collapsed network
        assert (ours - theirs).abs().max() < 1e-5, space.key(genotype)
        assert (ours - reference).abs().max() < 1e-5, space.key(genotype)


def test_subnet_sizes_match_the_published_once_for_all_counts():
    space = create_space("ofa_mbv3_w12")
    subnet = space.create_model(space.reference_genotype(), pretrained=False, num_classes=1000)
    assert n_parameters(subnet) == 9_135_928
    assert count_macs(subnet, (3, 236, 236)) == pytest.approx(595.19e6, abs=0.01e6)
    w10 = create_space("ofa_mbv3_w10")
    largest = w10.create_model(w10.largest_genotype(), pretrained=False, num_classes=1000)
    assert n_parameters(largest) == 7_664_760


def test_kernel_reduction_crops_the_centre_and_applies_each_transformation():
    weight = torch.arange(2 * 49, dtype=torch.float32).reshape(2, 1, 7, 7)
    assert torch.equal(reduce_kernel(weight, 3, {}), weight[..., 2:5, 2:5])
    to5 = torch.randn(25, 25)
    expected = (weight[..., 1:6, 1:6].reshape(2, 25) @ to5.T).reshape(2, 1, 5, 5)
    assert torch.allclose(reduce_kernel(weight, 5, {"7to5": to5}), expected)


def test_a_missing_ofa_supernet_says_where_to_get_it(tmp_path):
    with pytest.raises(PretrainedWeightsMissing, match=r"raw\.githubusercontent\.com.*w1\.2"):
        ofa_supernet(1.2, str(tmp_path / "absent"))


def test_an_ofa_file_is_checked_against_its_published_git_blob_id(tmp_path):
    from medtailor.search.supernet import git_blob_id

    copy = tmp_path / "ofa_mbv3_d234_e346_k357_w1.2"
    copy.write_bytes(b"not the supernet\n")
    git = shutil.which("git")
    if git:  # the same computation as git's own
        expected = subprocess.run([git, "hash-object", str(copy)], capture_output=True, text=True)
        assert git_blob_id(copy) == expected.stdout.strip()
    # The id of an empty blob is a published constant of git.
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert git_blob_id(empty) == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    with pytest.raises(ValueError, match=r"not the published .*w1\.2.*d75a3613bae2"):
        ofa_supernet(1.2, str(copy))


def test_lite0_elastic_at_full_size_is_imagenet_lite0_exactly():
    from medtailor.train.weights import create_pretrained

    space = create_space("lite0_elastic")
    assert len(space.genes) == 29
    assert space.reference_genotype() == space.largest_genotype()
    model = space.create_model(space.largest_genotype(), pretrained=True, num_classes=1000)
    lite0 = create_pretrained("efficientnet_lite0", "imagenet")
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), lite0.eval()(x))


def test_lite0_elastic_members_keep_the_most_important_channels_and_the_first_blocks():
    from medtailor.search.supernet import lite0_supernet

    space = create_space("lite0_elastic")
    supernet = lite0_supernet()
    names = [g.name for g in space.genes]
    genotype = list(space.largest_genotype())
    genotype[names.index("e4.0")] = 3  # stage 4 (192 channels), first block: 112*3 of 112*6
    genotype[names.index("k4.0")] = 3
    genotype[names.index("d4")] = 2
    state = extract_subnet(space, supernet, genotype)
    full = supernet.state
    block = "blocks.5.0"  # elastic stage 4 is timm's blocks.5
    importance = full[f"{block}.conv_pwl.weight"].abs().sum(dim=(0, 2, 3))
    kept = torch.sort(torch.argsort(importance, descending=True)[:336]).values
    assert torch.equal(state[f"{block}.conv_pw.weight"], full[f"{block}.conv_pw.weight"][kept])
    assert torch.equal(
        state[f"{block}.conv_dw.weight"], full[f"{block}.conv_dw.weight"][kept][..., 1:4, 1:4]
    )
    assert "blocks.5.1.conv_pw.weight" in state and "blocks.5.2.conv_pw.weight" not in state
    model = space.create_model(genotype, pretrained=True, in_chans=1)
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 1280)


def test_the_first_candidate_is_the_reference_network():
    for name in ("lite0_elastic", "ofa_mbv3_w12"):
        space = create_space(name)
        asked = ask_generation(space, SearchPlan(budget=6, workers=2, seed=5), [])
        assert asked[0]["genotype"] == list(space.reference_genotype())
        assert asked[0]["mutated_fraction"] is None


def scored(asked, generation_scores):
    return [
        {**c, "score": s, "feasible": True} for c, s in zip(asked, generation_scores, strict=True)
    ]


def test_replaying_the_history_continues_the_search_as_one_optimiser_would():
    space = create_space("ofa_mbv3_w12")
    plan = SearchPlan(budget=8, workers=2, seed=11)
    scores = iter([0.3, 0.5, 0.4, 0.6, 0.2, 0.7, 0.1, 0.9])

    # One optimiser, asked and told in generations.
    optimizer = create_optimizer(space, plan)
    straight = []
    for _ in range(plan.generations):
        asked = [optimizer.ask() for _ in range(plan.workers)]
        values = [next(scores) for _ in asked]
        for candidate, value in zip(asked, values, strict=True):
            optimizer.tell(candidate, -value)
        straight.append([list(c.args) for c in asked])

    # Rebuilt from the history before every generation.
    scores = iter([0.3, 0.5, 0.4, 0.6, 0.2, 0.7, 0.1, 0.9])
    history: list[dict] = []
    for generation in range(plan.generations):
        asked = ask_generation(space, plan, history)
        assert [c["genotype"] for c in asked] == straight[generation]
        history += scored(asked, [next(scores) for _ in asked])
    assert all(0 < r["mutated_fraction"] <= 1 for r in history[1:])

    with pytest.raises(HistoryMismatch, match="another seed"):
        replay(space, SearchPlan(budget=8, workers=2, seed=12), history)


def test_candidates_over_the_size_limit_are_scored_infeasible_without_training(
    repo_params, tmp_path
):
    from medtailor.search import read_history, run_ask, run_candidate, run_tell
    from medtailor.search.evolution import INFEASIBLE_LOSS, loss_of

    params = copy.deepcopy(repo_params)
    params["search"].update({"budget": 2, "workers": 2, "max_parameters": 1000})
    run_ask(tmp_path, 0, params)
    for index in range(2):  # no scorer, no patches: nothing may be trained
        run_candidate(tmp_path, 0, index, None, tmp_path / "state", params)
    run_tell(tmp_path, 0, params)
    history = read_history(tmp_path, 1)
    assert [r["status"] for r in history] == ["infeasible", "infeasible"]
    assert all(r["parameters"] > 1000 and loss_of(r) == INFEASIBLE_LOSS for r in history)
    assert not (tmp_path / "state").exists()
