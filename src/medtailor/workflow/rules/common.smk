# Shared by every rule: the conda environment and the params file each CLI call reads.
ENV = "../envs/medtailor.yaml"
PARAMS = "params.yaml"


def detector_source():
    """Candidates come from the trained detector, or from the user's own box file."""
    if config["detector"]["source"] == "external":
        return config["detector"]["external_boxes"]
    return rules.train_detector.output.models
