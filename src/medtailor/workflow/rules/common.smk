# Shared by every rule: the conda environment and the params file each CLI call reads.
ENV = "../envs/medtailor.yaml"
PARAMS = "params.yaml"

# The two longest chains start first when jobs compete for cores: the segmentation
# search (candidates, supernet, final network: one after the other) and the detector
# that every classifier waits for. Otherwise the segmentation search started last and
# ran alone at the end (docs/benchmarks.md, the demo).
SEGMENTATION_SEARCH_PRIORITY = 20
DETECTOR_PRIORITY = 10


# The tasks the project's params.yaml holds blocks for (medtailor init --task): the
# Snakefile includes only their rules.
RUNS_CLASSIFICATION = runs_classification(config)
RUNS_DETECTOR = runs_detector(config)
RUNS_SEGMENTATION = runs_segmentation(config)
# An external-validation project: frozen models in trained/<model>/ score a new cohort.
EXTERNAL = is_external(config)
EXTERNAL_MODELS = config["external"]["models"] if EXTERNAL else []


def detector_source():
    """Candidates come from the trained detector (an external project's: the one its
    frozen models learnt from, in their bundles), or from the user's own box file."""
    if config["detector"]["source"] == "external":
        return config["detector"]["external_boxes"]
    if EXTERNAL:
        return f"{EXTERNAL_BUNDLES}/{EXTERNAL_MODELS[0]}/detector"
    return rules.train_detector.output.models


# Whole-image samples (patches.source: whole_image) need no detector: the patches rule
# then reads no candidates, and the detector rules are not included.
WHOLE_IMAGE = RUNS_CLASSIFICATION and not RUNS_DETECTOR
PATCH_PLOT = "plots/patches_classes" if WHOLE_IMAGE else "plots/patches_iou"


def patch_candidates():
    return [] if WHOLE_IMAGE else rules.detect.output.candidates


def candidates_option(wildcards, input):
    return "" if WHOLE_IMAGE else f"--candidates {input.candidates}"


# The studies (rules/study.smk): each expands its params block into named configurations.
def study_models(wildcards):
    # Raises before any job runs when a configuration's weights are missing (unless the
    # study allows it), naming every file to provide.
    names = runnable_configurations(config, wildcards.study)
    return expand(f"data/studies/{wildcards.study}/models/{{name}}", name=names)


# The detector's cross-validation: part of the default target when it is on.
DETECTOR_CV = ["data/detector_cv/report"] if cross_validates_detector(config) else []
STUDY_REPORTS = expand("data/studies/{study}/report", study=enabled_studies(config))


# The search (rules/search.smk): generations of `workers` candidates within `budget`.
SEARCH = config.get("search", {"budget": 0, "workers": 1})
SEARCH_GENERATIONS = -(-SEARCH["budget"] // SEARCH["workers"])
SEARCH_FINALS = final_model_names(config)
SEARCH_FINALISTS = [name for name in SEARCH_FINALS if name.startswith("nas_top")]


def search_size(generation):
    """Candidates of a generation (the last one may be smaller)."""
    return min(
        SEARCH["workers"], SEARCH["budget"] - int(generation) * SEARCH["workers"]
    )


def told_before(wildcards):
    """The history the ask of a generation replays (none for the first)."""
    generation = int(wildcards.g)
    return [f"data/search/g{generation - 1:03d}/history.json"] if generation else []


# The segmentation search (rules/search_seg.smk): the initial generation (clusters x
# initial_per_cluster topologies), then generations of `workers` within `budget`.
SEARCH_SEG = config.get(
    "search_seg", {"clusters": 0, "initial_per_cluster": 0, "budget": 0, "workers": 1}
)
SEARCH_SEG_INITIAL = min(
    SEARCH_SEG["clusters"] * SEARCH_SEG["initial_per_cluster"], SEARCH_SEG["budget"]
)
SEARCH_SEG_GENERATIONS = 1 + -(
    -(SEARCH_SEG["budget"] - SEARCH_SEG_INITIAL) // SEARCH_SEG["workers"]
)
SEG_FINALS = seg_final_names(config)


def search_seg_size(generation):
    """Candidates of a coarse generation (the first: the initial ones)."""
    generation = int(generation)
    if generation == 0:
        return SEARCH_SEG_INITIAL
    left = (
        SEARCH_SEG["budget"]
        - SEARCH_SEG_INITIAL
        - (generation - 1) * SEARCH_SEG["workers"]
    )
    return min(SEARCH_SEG["workers"], left)


def seg_told_before(wildcards):
    """The history the ask of a coarse generation reads (none for the first)."""
    generation = int(wildcards.g)
    return [f"data/search_seg/g{generation - 1:03d}/history.json"] if generation else []
