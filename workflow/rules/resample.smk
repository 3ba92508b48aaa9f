rule resample:
    input:
        data=rules.ingest.output.data,
    output:
        data=directory("data/resample"),
        metrics="metrics/resample.json",
    log:
        "logs/resample.log",
    conda:
        ENV
    resources:
        mem_mb=16000,
        runtime=120,
        cpus_per_task=1,
    params:
        file=PARAMS,
        resample=config["resample"],
    shell:
        "medtailor resample --params {params.file} --input {input.data} --output {output.data} --metrics {output.metrics} > {log} 2>&1"
