rule train:
    input:
        store=rules.patches.output.store,
    output:
        model=directory("data/models/{model}"),
        metrics="metrics/train/{model}.json",
    log:
        "logs/train/{model}.log",
    wildcard_constraints:
        model="|".join(config["models"]),
    conda:
        ENV
    resources:
        mem_mb=8000,
        runtime=240,
        cpus_per_task=2,
        gpu=config["compute"]["gpus"],
    params:
        file=PARAMS,
        seed=config["seed"],
        train=config["train"],
        entry=lambda wildcards: config["models"][wildcards.model],
        gpus=config["compute"]["gpus"],
    shell:
        "medtailor train --params {params.file} --model {wildcards.model} --input {input.store} --output {output.model} --state data/train_state/{wildcards.model} --metrics {output.metrics} > {log} 2>&1"
