# An external-validation project (medtailor init --external): the frozen models' bundles
# (trained/<model>/) score the cohort's patch store; evaluate writes the external report.
# No training job: the detector and the classifiers come with the bundles.


rule score:
    input:
        store=rules.patches.output.store,
        model=f"{EXTERNAL_BUNDLES}/{{model}}",
    output:
        scores=directory("data/scores/{model}"),
        metrics="metrics/score/{model}.json",
    log:
        "logs/score/{model}.log",
    benchmark:
        "benchmarks/score/{model}.tsv"
    wildcard_constraints:
        model="|".join(EXTERNAL_MODELS),
    conda:
        ENV
    threads: config["compute"]["threads"]
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=min(config["compute"]["gpus"], 1),
    params:
        file=PARAMS,
        reads=stage_values(config, "score"),
    shell:
        "medtailor score --threads {threads} --params {params.file} --model {input.model} --input {input.store} --output {output.scores} --metrics {output.metrics} > {log} 2>&1"


rule evaluate:
    input:
        store=rules.patches.output.store,
        data=rules.resample.output.data,
        split=rules.split.output.table,
        scores=expand("data/scores/{model}", model=EXTERNAL_MODELS),
        models=expand(f"{EXTERNAL_BUNDLES}/{{model}}", model=EXTERNAL_MODELS),
    output:
        report=directory("data/evaluate"),
        metrics="metrics/evaluate.json",
    log:
        "logs/evaluate.log",
    benchmark:
        "benchmarks/evaluate.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        file=PARAMS,
        reads=stage_values(config, "evaluate"),
    shell:
        "medtailor evaluate --threads {threads} --params {params.file} --input {input.store} --resample {input.data} --split {input.split} --trained data/scores --output {output.report} --metrics {output.metrics} > {log} 2>&1"
