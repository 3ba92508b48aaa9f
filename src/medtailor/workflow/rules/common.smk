# Shared by every rule: the conda environment and the params file each CLI call reads.
ENV = "../envs/medtailor.yaml"
PARAMS = "params.yaml"


def detector_source():
    """Candidates come from the trained detector, or from the user's own box file."""
    if config["detector"]["source"] == "external":
        return config["detector"]["external_boxes"]
    return rules.train_detector.output.models


# The search (rules/search.smk): generations of `workers` candidates within `budget`.
SEARCH = config["search"]
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
