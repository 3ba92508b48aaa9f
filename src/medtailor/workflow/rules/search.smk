# The architecture search, unrolled: its budget fixes the generations, so every ask,
# candidate and tell is a job known before the run (no checkpoints). A finished candidate
# is an output like any other: a killed search resumes without training it again.
# (SEARCH, search_size and told_before live in common.smk.)


wildcard_constraints:
    g=r"\d{3}",
    i=r"\d+",


rule search_ask:
    input:
        history=told_before,
    output:
        asked="data/search/g{g}/asked.json",
        metrics="metrics/search/g{g}_ask.json",
    log:
        "logs/search/g{g}_ask.log",
    benchmark:
        "benchmarks/search_ask/g{g}_ask.tsv"
    localrule: True
    conda:
        ENV
    threads: 1
    params:
        file=PARAMS,
        reads=stage_values(config, "search_ask"),
    shell:
        "medtailor search-ask --threads {threads} --params {params.file} --generation {wildcards.g} --output data/search --metrics {output.metrics} > {log} 2>&1"


rule search_candidate:
    input:
        asked="data/search/g{g}/asked.json",
        store=rules.patches.output.store,
        data=rules.resample.output.data,
        split=rules.split.output.table,
    output:
        record="data/search/g{g}/candidate_{i}.json",
        metrics="metrics/search/g{g}_candidate_{i}.json",
    log:
        "logs/search/g{g}_candidate_{i}.log",
    benchmark:
        "benchmarks/search_candidate/g{g}_candidate_{i}.tsv"
    conda:
        ENV
    threads: config["compute"]["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=min(config["compute"]["gpus"], 1),
    params:
        file=PARAMS,
        reads=stage_values(config, "search_candidate"),
    shell:
        "medtailor search-candidate --threads {threads} --params {params.file} --generation {wildcards.g} --index {wildcards.i} --input {input.store} --resample {input.data} --split {input.split} --state data/search_state --output data/search --metrics {output.metrics} > {log} 2>&1"


rule search_tell:
    input:
        records=lambda wildcards: expand(
            "data/search/g{g}/candidate_{i}.json",
            g=wildcards.g,
            i=range(search_size(wildcards.g)),
        ),
        history=told_before,
    output:
        history="data/search/g{g}/history.json",
        metrics="metrics/search/g{g}_tell.json",
    log:
        "logs/search/g{g}_tell.log",
    benchmark:
        "benchmarks/search_tell/g{g}_tell.tsv"
    localrule: True
    conda:
        ENV
    threads: 1
    params:
        file=PARAMS,
        reads=stage_values(config, "search_tell"),
    shell:
        "medtailor search-tell --threads {threads} --params {params.file} --generation {wildcards.g} --output data/search --metrics {output.metrics} > {log} 2>&1"


rule search_summary:
    input:
        history=f"data/search/g{SEARCH_GENERATIONS - 1:03d}/history.json",
    output:
        summary=directory("data/search_summary"),
        metrics="metrics/search_summary.json",
    log:
        "logs/search/summary.log",
    benchmark:
        "benchmarks/search_summary.tsv"
    localrule: True
    conda:
        ENV
    threads: 1
    params:
        file=PARAMS,
        reads=stage_values(config, "search_summary"),
    shell:
        "medtailor search-summary --threads {threads} --params {params.file} --input data/search --output {output.summary} --metrics {output.metrics} > {log} 2>&1"


rule search_final:
    input:
        summary=rules.search_summary.output.summary,
        store=rules.patches.output.store,
        data=rules.resample.output.data,
        split=rules.split.output.table,
    output:
        model=directory("data/models/{final}"),
        metrics="metrics/train/{final}.json",
    log:
        "logs/train/{final}.log",
    benchmark:
        "benchmarks/search_final/{final}.tsv"
    wildcard_constraints:
        final="|".join(n for n in SEARCH_FINALS if n != "nas_winner_scratch")
        or "no-search",
    conda:
        ENV
    threads: config["compute"]["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=min(config["compute"]["gpus"], 1),
    params:
        file=PARAMS,
        reads=stage_values(config, "search_final"),
    shell:
        "medtailor search-final --threads {threads} --params {params.file} --name {wildcards.final} --input {input.summary} --patches {input.store} --resample {input.data} --split {input.split} --state data/train_state/{wildcards.final} --output data/models --metrics {output.metrics} > {log} 2>&1"


# The winner is the retrained finalist with the best validation AUFROC: it waits for them.
rule search_winner_scratch:
    input:
        summary=rules.search_summary.output.summary,
        store=rules.patches.output.store,
        data=rules.resample.output.data,
        split=rules.split.output.table,
        finalists=expand("data/models/{final}", final=SEARCH_FINALISTS),
    output:
        model=directory("data/models/nas_winner_scratch"),
        metrics="metrics/train/nas_winner_scratch.json",
    log:
        "logs/train/nas_winner_scratch.log",
    benchmark:
        "benchmarks/search_winner_scratch.tsv"
    conda:
        ENV
    threads: config["compute"]["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=min(config["compute"]["gpus"], 1),
    params:
        file=PARAMS,
        reads=stage_values(config, "search_winner_scratch"),
    shell:
        "medtailor search-final --threads {threads} --params {params.file} --name nas_winner_scratch --input {input.summary} --patches {input.store} --resample {input.data} --split {input.split} --state data/train_state/nas_winner_scratch --output data/models --metrics {output.metrics} > {log} 2>&1"
