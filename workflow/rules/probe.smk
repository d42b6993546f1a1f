# Stage 2: measure the caching strategies' memory with ranks started like training, then choose
# the strategy training will use. On the cluster the probe runs in the same kind of allocation as
# training (same GPUs, so the same world size and node type): see the gpu/cpus resources.


rule memory_probe:
    input:
        inventory=rules.inventory.output.csv,
    output:
        json="results/probe/memory.json",
        config="results/probe/memory.config.yaml",
    params:
        caching=config["caching"],
        train=config["train"],
    threads: max(1, min(CFG.train.world_size, CFG.caching.probe_max_ranks))
    resources:
        gpu=CFG.train.gpus,
    log:
        "results/logs/memory_probe.log",
    conda:
        "../envs/cellmapseg.yaml"
    script:
        "../scripts/memory_probe.py"


rule select_caching:
    input:
        memory=rules.memory_probe.output.json,
    output:
        json="results/probe/caching_strategy.json",
        config="results/probe/caching_strategy.config.yaml",
    params:
        caching=config["caching"],
    log:
        "results/logs/select_caching.log",
    conda:
        "../envs/cellmapseg.yaml"
    script:
        "../scripts/select_caching.py"
