rule split:
    input:
        data=rules.resample.output.data,
    output:
        table="data/split/split.csv",
        metrics="metrics/split.json",
    log:
        "logs/split.log",
    conda:
        ENV
    resources:
        mem_mb=2000,
        runtime=10,
        cpus_per_task=1,
    params:
        file=PARAMS,
        seed=config["seed"],
        split=config["split"],
    shell:
        "medtailor split --params {params.file} --input {input.data} --output {output.table} --metrics {output.metrics} > {log} 2>&1"
