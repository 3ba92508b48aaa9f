# The coarse-to-fine segmentation search, unrolled like the OFA search (rules/search.smk):
# its budget fixes the coarse generations, so every ask, candidate and tell is a job known
# before the run, and a finished candidate is an output that a resumed run keeps.
# (SEARCH_SEG_GENERATIONS, search_seg_size, seg_told_before and SEG_FINALS: common.smk.)


rule search_seg_ask:
    input:
        history=seg_told_before,
    output:
        asked="data/search_seg/g{g}/asked.json",
        metrics="metrics/search_seg/g{g}_ask.json",
    log:
        "logs/search_seg/g{g}_ask.log",
    benchmark:
        "benchmarks/search_seg_ask/g{g}_ask.tsv"
    localrule: True
    conda:
        ENV
    threads: 1
    params:
        file=PARAMS,
        reads=stage_values(config, "search_seg_ask"),
    shell:
        "medtailor search-seg-ask --threads {threads} --params {params.file} --generation {wildcards.g} --output data/search_seg --metrics {output.metrics} > {log} 2>&1"


rule search_seg_candidate:
    input:
        asked="data/search_seg/g{g}/asked.json",
        data=rules.resample.output.data,
        split=rules.split.output.table,
    output:
        record="data/search_seg/g{g}/candidate_{i}.json",
        metrics="metrics/search_seg/g{g}_candidate_{i}.json",
    log:
        "logs/search_seg/g{g}_candidate_{i}.log",
    benchmark:
        "benchmarks/search_seg_candidate/g{g}_candidate_{i}.tsv"
    priority: SEGMENTATION_SEARCH_PRIORITY
    conda:
        ENV
    threads: config["compute"]["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=min(config["compute"]["gpus"], 1),
    params:
        file=PARAMS,
        reads=stage_values(config, "search_seg_candidate"),
    shell:
        "medtailor search-seg-candidate --threads {threads} --params {params.file} --generation {wildcards.g} --index {wildcards.i} --input {input.data} --split {input.split} --state data/search_seg_state --output data/search_seg --metrics {output.metrics} > {log} 2>&1"


rule search_seg_tell:
    input:
        records=lambda wildcards: expand(
            "data/search_seg/g{g}/candidate_{i}.json",
            g=wildcards.g,
            i=range(search_seg_size(wildcards.g)),
        ),
        history=seg_told_before,
    output:
        history="data/search_seg/g{g}/history.json",
        metrics="metrics/search_seg/g{g}_tell.json",
    log:
        "logs/search_seg/g{g}_tell.log",
    benchmark:
        "benchmarks/search_seg_tell/g{g}_tell.tsv"
    localrule: True
    conda:
        ENV
    threads: 1
    params:
        file=PARAMS,
        reads=stage_values(config, "search_seg_tell"),
    shell:
        "medtailor search-seg-tell --threads {threads} --params {params.file} --generation {wildcards.g} --output data/search_seg --metrics {output.metrics} > {log} 2>&1"


rule search_seg_fine:
    input:
        history=f"data/search_seg/g{SEARCH_SEG_GENERATIONS - 1:03d}/history.json",
        data=rules.resample.output.data,
        split=rules.split.output.table,
    output:
        fine=directory("data/search_seg_fine"),
        metrics="metrics/search_seg_fine.json",
    log:
        "logs/search_seg/fine.log",
    benchmark:
        "benchmarks/search_seg_fine.tsv"
    priority: SEGMENTATION_SEARCH_PRIORITY
    conda:
        ENV
    threads: config["compute"]["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=min(config["compute"]["gpus"], 1),
    params:
        file=PARAMS,
        reads=stage_values(config, "search_seg_fine"),
    shell:
        "medtailor search-seg-fine --threads {threads} --params {params.file} --search data/search_seg --input {input.data} --split {input.split} --state data/search_seg_state --output {output.fine} --metrics {output.metrics} > {log} 2>&1"


rule search_seg_final:
    input:
        fine=rules.search_seg_fine.output.fine,
        data=rules.resample.output.data,
        split=rules.split.output.table,
        ingest=rules.ingest.output.data,
    output:
        model=directory("data/seg_models/{seg_final}"),
        metrics="metrics/train_seg/{seg_final}.json",
    log:
        "logs/train_seg/{seg_final}.log",
    benchmark:
        "benchmarks/search_seg_final/{seg_final}.tsv"
    wildcard_constraints:
        seg_final="|".join(SEG_FINALS) or "(?!x)x",
    priority: SEGMENTATION_SEARCH_PRIORITY
    conda:
        ENV
    threads: config["compute"]["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=min(config["compute"]["gpus"], 1),
    params:
        file=PARAMS,
        reads=stage_values(config, "search_seg_final"),
    shell:
        "medtailor search-seg-final --threads {threads} --params {params.file} --name {wildcards.seg_final} --input {input.fine} --resample {input.data} --split {input.split} --ingest {input.ingest} --state data/train_seg_state/{wildcards.seg_final} --output data/seg_models --metrics {output.metrics} > {log} 2>&1"
