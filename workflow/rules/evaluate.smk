rule evaluate:
    input:
        store=rules.patches.output.store,
        data=rules.resample.output.data,
        split=rules.split.output.table,
        models=expand(rules.train.output.model, model=config["models"]),
    output:
        report=directory("data/evaluate"),
        metrics="metrics/evaluate.json",
    log:
        "logs/evaluate.log",
    conda:
        ENV
    resources:
        mem_mb=8000,
        runtime=120,
        cpus_per_task=1,
    params:
        file=PARAMS,
        seed=config["seed"],
        evaluate=config["evaluate"],
    shell:
        "medtailor evaluate --params {params.file} --input {input.store} --resample {input.data} --split {input.split} --trained data/models --output {output.report} --metrics {output.metrics} > {log} 2>&1"
