rule train_detector:
    input:
        data=rules.resample.output.data,
        split=rules.split.output.table,
    output:
        models=directory("data/detector"),
        metrics="metrics/train_detector.json",
    log:
        "logs/train_detector.log",
    benchmark:
        "benchmarks/train_detector.tsv"
    priority: DETECTOR_PRIORITY
    conda:
        ENV
    threads: config["compute"]["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=config["compute"]["gpus"],
    params:
        file=PARAMS,
        reads=stage_values(config, "train_detector"),
    shell:
        "medtailor train-detector --threads {threads} --params {params.file} --input {input.data} --split {input.split} --output {output.models} --metrics {output.metrics} > {log} 2>&1"


rule detect:
    input:
        data=rules.resample.output.data,
        detector=detector_source(),
    output:
        candidates="data/detect/candidates.parquet",
        metrics="metrics/detect.json",
    log:
        "logs/detect.log",
    benchmark:
        "benchmarks/detect.tsv"
    conda:
        ENV
    threads: config["compute"]["threads"]
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=config["compute"]["gpus"],
    params:
        file=PARAMS,
        reads=stage_values(config, "detect"),
    shell:
        "medtailor detect --threads {threads} --params {params.file} --input {input.data} --detector {input.detector} --output {output.candidates} --metrics {output.metrics} > {log} 2>&1"
