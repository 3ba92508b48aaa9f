# medtailor workflow: one rule per stage, each a single `medtailor <stage>` call.
# Configuration: params.yaml (validated against the package's schema).
from snakemake.utils import min_version, validate

from medtailor.tracking import end_pipeline_run, start_pipeline_run

min_version("9.0")


configfile: "params.yaml"


validate(config, "src/medtailor/config/params.schema.yaml")


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


onerror:
    end_pipeline_run(config, "FAILED")
