# medtailor workflow: one rule per stage, each a single `medtailor <stage>` call.
# Configuration: params.yaml (validated against the package's schema).
from snakemake.utils import min_version

from medtailor.config import validate_params
from medtailor.dvc_sync import record_in_dvc_lock
from medtailor.tracking import end_pipeline_run, start_pipeline_run

min_version("9.0")


configfile: "params.yaml"


# The package's schema plus the relations between keys (one check for Snakemake, DVC, CLI).
validate_params(config)


include: "workflow/rules/common.smk"
include: "workflow/rules/synth.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/resample.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/detect.smk"
include: "workflow/rules/patches.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    default_target: True
    input:
        rules.evaluate.output,


onstart:
    start_pipeline_run(config)


onsuccess:
    end_pipeline_run(config, "FINISHED")
    # What Snakemake built is recorded in dvc.lock: `dvc repro` then reruns only what changes.
    record_in_dvc_lock()


onerror:
    end_pipeline_run(config, "FAILED")
