rule synth:
    output:
        data=directory("data/synth"),
        metrics="metrics/synth.json",
    log:
        "logs/synth.log",
    benchmark:
        "benchmarks/synth.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        file=PARAMS,
        reads=stage_values(config, "synth"),
    shell:
        "medtailor synth --threads {threads} --params {params.file} --output {output.data} --metrics {output.metrics} > {log} 2>&1"
