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
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        file=PARAMS,
        reads=stage_values(config, "evaluate"),
    shell:
        "medtailor evaluate --threads {threads} --params {params.file} --input {input.store} --resample {input.data} --split {input.split} --trained data/models --output {output.report} --metrics {output.metrics} > {log} 2>&1"
