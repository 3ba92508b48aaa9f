rule ingest:
    input:
        raw=config["ingest"]["input"],
    output:
        data=directory("data/ingest"),
        metrics="metrics/ingest.json",
    log:
        "logs/ingest.log",
    benchmark:
        "benchmarks/ingest.tsv"
    conda:
        ENV
    threads: config["ingest"]["workers"]
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        file=PARAMS,
        reads=stage_values(config, "ingest"),
    shell:
        "medtailor ingest --threads {threads} --params {params.file} --input {input.raw} --output {output.data} --metrics {output.metrics} > {log} 2>&1"
