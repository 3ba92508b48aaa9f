rule evaluate:
    input:
        store=rules.patches.output.store if RUNS_CLASSIFICATION else [],
        data=rules.resample.output.data,
        split=rules.split.output.table,
        models=(
            expand(rules.train.output.model, model=config["models"])
            if RUNS_CLASSIFICATION
            else []
        ),
        search=expand("data/models/{final}", final=SEARCH_FINALS),
        search_summary=rules.search_summary.output.summary if SEARCH_FINALS else [],
        segmented=(
            expand(rules.train_seg.output.model, seg_model=config["seg_models"])
            if RUNS_SEGMENTATION
            else []
        ),
        seg_searched=expand("data/seg_models/{name}", name=SEG_FINALS),
        search_seg=rules.search_seg_fine.output.fine if SEG_FINALS else [],
    output:
        report=directory("data/evaluate"),
        metrics="metrics/evaluate.json",
    log:
        "logs/evaluate.log",
    benchmark:
        "benchmarks/evaluate.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        file=PARAMS,
        reads=stage_values(config, "evaluate"),
        # The patch store and the trained classifiers, or none (segmentation only).
        store=lambda wildcards, input: input.store if RUNS_CLASSIFICATION else "none",
        summary=lambda wildcards, input: (
            input.search_summary if SEARCH_FINALS else "none"
        ),
        # The folder of the segmentation models (their common parent), if any.
        search_seg=lambda wildcards, input: input.search_seg if SEG_FINALS else "none",
        segmented=lambda wildcards, input: (
            "data/seg_models" if input.segmented or input.seg_searched else "none"
        ),
    shell:
        "medtailor evaluate --threads {threads} --params {params.file} --input {params.store} --resample {input.data} --split {input.split} --trained data/models --search-summary {params.summary} --segmented {params.segmented} --search-seg {params.search_seg} --output {output.report} --metrics {output.metrics} > {log} 2>&1"
