rule synth:
    output:
        data=directory("data/synth"),
        metrics="metrics/synth.json",
    log:
        "logs/synth.log",
    conda:
        ENV
    resources:
        mem_mb=2000,
        runtime=20,
        cpus_per_task=1,
    params:
        file=PARAMS,
        seed=config["seed"],
        synth=config["synth"],
    shell:
        "medtailor synth --params {params.file} --output {output.data} --metrics {output.metrics} > {log} 2>&1"
