# The built-in detector's patient-level cross-validation (detector.cross_validation_folds):
# one job per fold, so the folds train side by side (on Slurm, one GPU job each).
FOLDS = list(range(int(config["detector"].get("cross_validation_folds", 0))))


rule detector_cv_fold:
    input:
        data=rules.resample.output.data,
    output:
        fold=directory("data/detector_cv/folds/fold{fold}"),
        metrics="metrics/detector_cv/fold{fold}.json",
    log:
        "logs/detector_cv/fold{fold}.log",
    benchmark:
        "benchmarks/detector_cv/fold{fold}.tsv"
    wildcard_constraints:
        fold=r"\d+",
    conda:
        ENV
    threads: config["compute"]["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=config["compute"]["gpus"],
    params:
        file=PARAMS,
        reads=stage_values(config, "detector_cv_fold"),
    shell:
        "medtailor detector-cv-fold --threads {threads} --params {params.file} --fold {wildcards.fold} --input {input.data} --output {output.fold} --metrics {output.metrics} > {log} 2>&1"


rule detector_cv:
    input:
        data=rules.resample.output.data,
        folds=expand("data/detector_cv/folds/fold{fold}", fold=FOLDS),
    output:
        report=directory("data/detector_cv/report"),
        metrics="metrics/detector_cv.json",
    log:
        "logs/detector_cv.log",
    benchmark:
        "benchmarks/detector_cv.tsv"
    conda:
        ENV
    params:
        file=PARAMS,
        reads=stage_values(config, "detector_cv"),
    shell:
        "medtailor detector-cv --params {params.file} --input {input.data} --folds {input.folds} --output {output.report} --metrics {output.metrics} > {log} 2>&1"
