rule ingest:
    input:
        raw=config["ingest"]["input"],
    output:
        data=directory("data/ingest"),
        metrics="metrics/ingest.json",
    log:
        "logs/ingest.log",
    conda:
        ENV
    resources:
        mem_mb=8000,
        runtime=120,
        cpus_per_task=1,
    params:
        file=PARAMS,
        ingest=config["ingest"],
    shell:
        "medtailor ingest --params {params.file} --input {input.raw} --output {output.data} --metrics {output.metrics} > {log} 2>&1"
