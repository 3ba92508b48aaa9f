rule patches:
    input:
        data=rules.resample.output.data,
        split=rules.split.output.table,
        candidates=patch_candidates(),
    output:
        store=directory("data/patches"),
        metrics="metrics/patches.json",
        plot=f"{PATCH_PLOT}.png",
        table=f"{PATCH_PLOT}.csv",
    log:
        "logs/patches.log",
    benchmark:
        "benchmarks/patches.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        file=PARAMS,
        reads=stage_values(config, "patches"),
        candidates=candidates_option,
    shell:
        "medtailor patches --threads {threads} --params {params.file} --input {input.data} --split {input.split} {params.candidates} --output {output.store} --plots plots --metrics {output.metrics} > {log} 2>&1"
