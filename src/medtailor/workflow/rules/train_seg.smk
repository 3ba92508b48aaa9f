rule train_seg:
    input:
        data=rules.resample.output.data,
        split=rules.split.output.table,
        ingest=rules.ingest.output.data,
    output:
        model=directory("data/seg_models/{seg_model}"),
        metrics="metrics/train_seg/{seg_model}.json",
    log:
        "logs/train_seg/{seg_model}.log",
    benchmark:
        "benchmarks/train_seg/{seg_model}.tsv"
    wildcard_constraints:
        seg_model="|".join(config["seg_models"]) or "(?!x)x",
    conda:
        ENV
    threads: config["compute"]["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        # One process: a segmentation job uses at most one GPU.
        gpu=min(config["compute"]["gpus"], 1),
    params:
        file=PARAMS,
        reads=lambda wildcards: stage_values(config, "train_seg", wildcards.seg_model),
    shell:
        "medtailor train-seg --threads {threads} --params {params.file} --model {wildcards.seg_model} --input {input.data} --split {input.split} --ingest {input.ingest} --output {output.model} --state data/train_seg_state/{wildcards.seg_model} --metrics {output.metrics} > {log} 2>&1"
