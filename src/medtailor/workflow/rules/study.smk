rule study_train:
    input:
        store=rules.patches.output.store,
    output:
        model=directory("data/studies/{study}/models/{config}"),
        metrics="metrics/studies/{study}/{config}.json",
    log:
        "logs/studies/{study}/{config}.log",
    benchmark:
        "benchmarks/study_train/{study}/{config}.tsv"
    wildcard_constraints:
        study="[^/]+",
        config="[^/]+",
    conda:
        ENV
    threads: config["compute"]["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=config["compute"]["gpus"],
    params:
        file=PARAMS,
        # The configuration's own expanded entry: a change elsewhere in the study's block
        # (another architecture added) leaves it alone.
        reads=lambda wildcards: configuration_values(
            config, wildcards.study, wildcards.config
        ),
    shell:
        "medtailor study-train --threads {threads} --params {params.file} --study {wildcards.study} --model {wildcards.config} --input {input.store} --output {output.model} --state data/study_state/{wildcards.study}/{wildcards.config} --metrics {output.metrics} > {log} 2>&1"


rule study:
    input:
        store=rules.patches.output.store,
        models=study_models,
    output:
        report=directory("data/studies/{study}/report"),
        metrics="metrics/studies/{study}.json",
    log:
        "logs/studies/{study}.log",
    benchmark:
        "benchmarks/study/{study}.tsv"
    wildcard_constraints:
        study="[^/]+",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        file=PARAMS,
        reads=lambda wildcards: stage_values(config, "study", study=wildcards.study),
    shell:
        "medtailor study --threads {threads} --params {params.file} --study {wildcards.study} --input {input.store} --models data/studies/{wildcards.study}/models --output {output.report} --metrics {output.metrics} > {log} 2>&1"


rule study_zoo:
    input:
        "data/studies/zoo/report",


rule study_grid:
    input:
        "data/studies/grid/report",


rule study_transfusion:
    input:
        "data/studies/transfusion/report",
