rule train:
    input:
        store=rules.patches.output.store,
    output:
        model=directory("data/models/{model}"),
        metrics="metrics/train/{model}.json",
    log:
        "logs/train/{model}.log",
    benchmark:
        "benchmarks/train/{model}.tsv"
    wildcard_constraints:
        model="|".join(config["models"]),
    conda:
        ENV
    threads: config["compute"]["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=config["compute"]["gpus"],
    params:
        file=PARAMS,
        reads=lambda wildcards: stage_values(config, "train", wildcards.model),
    shell:
        "medtailor train --threads {threads} --params {params.file} --model {wildcards.model} --input {input.store} --output {output.model} --state data/train_state/{wildcards.model} --metrics {output.metrics} > {log} 2>&1"
