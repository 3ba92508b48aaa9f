rule train_detector:
    input:
        data=rules.resample.output.data,
        split=rules.split.output.table,
    output:
        models=directory("data/detector"),
        metrics="metrics/train_detector.json",
    log:
        "logs/train_detector.log",
    conda:
        ENV
    resources:
        mem_mb=8000,
        runtime=240,
        cpus_per_task=2,
        gpu=config["compute"]["gpus"],
    params:
        file=PARAMS,
        seed=config["seed"],
        detector=config["detector"],
        min_score=config["patches"]["min_score"],
        positive_iou=config["patches"]["positive_iou"],
        split_key=config["split"]["key"],
    shell:
        "medtailor train-detector --params {params.file} --input {input.data} --split {input.split} --output {output.models} --metrics {output.metrics} > {log} 2>&1"


rule detect:
    input:
        data=rules.resample.output.data,
        detector=detector_source(),
    output:
        candidates="data/detect/candidates.parquet",
        metrics="metrics/detect.json",
    log:
        "logs/detect.log",
    conda:
        ENV
    resources:
        mem_mb=8000,
        runtime=120,
        cpus_per_task=2,
        gpu=config["compute"]["gpus"],
    params:
        file=PARAMS,
        detector=config["detector"],
    shell:
        "medtailor detect --params {params.file} --input {input.data} --detector {input.detector} --output {output.candidates} --metrics {output.metrics} > {log} 2>&1"
