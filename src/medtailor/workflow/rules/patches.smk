rule patches:
    input:
        data=rules.resample.output.data,
        split=rules.split.output.table,
        candidates=rules.detect.output.candidates,
    output:
        store=directory("data/patches"),
        metrics="metrics/patches.json",
        plot="plots/patches_iou.png",
        table="plots/patches_iou.csv",
    log:
        "logs/patches.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        file=PARAMS,
        reads=stage_values(config, "patches"),
    shell:
        "medtailor patches --threads {threads} --params {params.file} --input {input.data} --split {input.split} --candidates {input.candidates} --output {output.store} --plots plots --metrics {output.metrics} > {log} 2>&1"
