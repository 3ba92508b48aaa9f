rule evaluate:
    input:
        store=rules.patches.output.store,
        data=rules.resample.output.data,
        split=rules.split.output.table,
        models=expand(rules.train.output.model, model=config["models"]),
        search=expand("data/models/{final}", final=SEARCH_FINALS),
        search_summary=rules.search_summary.output.summary if SEARCH_FINALS else [],
        segmented=expand(rules.train_seg.output.model, seg_model=config["seg_models"]),
    output:
        report=directory("data/evaluate"),
        metrics="metrics/evaluate.json",
    log:
        "logs/evaluate.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        file=PARAMS,
        reads=stage_values(config, "evaluate"),
        summary=lambda wildcards, input: (
            input.search_summary if SEARCH_FINALS else "none"
        ),
        # The folder of the segmentation models (their common parent), if any.
        segmented=lambda wildcards, input: (
            os.path.dirname(input.segmented[0]) if input.segmented else "none"
        ),
    shell:
        "medtailor evaluate --threads {threads} --params {params.file} --input {input.store} --resample {input.data} --split {input.split} --trained data/models --search-summary {params.summary} --segmented {params.segmented} --output {output.report} --metrics {output.metrics} > {log} 2>&1"
