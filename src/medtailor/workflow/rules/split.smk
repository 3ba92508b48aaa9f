rule split:
    input:
        data=rules.resample.output.data,
        # An earlier split table whose patients keep their split (split.keep).
        keep=config["split"]["keep"] or [],
    output:
        table="data/split/split.csv",
        metrics="metrics/split.json",
    log:
        "logs/split.log",
    benchmark:
        "benchmarks/split.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        file=PARAMS,
        reads=stage_values(config, "split"),
    shell:
        "medtailor split --threads {threads} --params {params.file} --input {input.data} --output {output.table} --metrics {output.metrics} > {log} 2>&1"
