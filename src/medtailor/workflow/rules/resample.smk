rule resample:
    input:
        data=rules.ingest.output.data,
    output:
        data=directory("data/resample"),
        metrics="metrics/resample.json",
    log:
        "logs/resample.log",
    benchmark:
        "benchmarks/resample.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=16000,
        runtime=120,
    params:
        file=PARAMS,
        reads=stage_values(config, "resample"),
    shell:
        "medtailor resample --threads {threads} --params {params.file} --input {input.data} --output {output.data} --metrics {output.metrics} > {log} 2>&1"
