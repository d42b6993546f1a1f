# Stage 2: measure the caching strategies' memory with ranks started like training, then choose
# the strategy training will use. On the cluster the probe runs in the same kind of allocation as
# training (same GPUs, so the same world size and node type): see the gpu/cpus resources.


rule memory_probe:
    input:
        inventory=rules.inventory.output.csv,
    output:
        json=str(R.memory),
        config=str(layout.resolved_config(R.memory)),
    params:
        caching=config["caching"],
        train=config["train"],
    threads: max(1, min(CFG.train.world_size, CFG.caching.probe_max_ranks))
    resources:
        gpu=CFG.train.gpus,
    log:
        str(R.log("memory_probe")),
    conda:
        "../envs/cellmapseg.yaml"
    script:
        "../scripts/memory_probe.py"


rule select_caching:
    input:
        memory=rules.memory_probe.output.json,
    output:
        json=str(R.caching),
        config=str(layout.resolved_config(R.caching)),
    params:
        caching=config["caching"],
    log:
        str(R.log("select_caching")),
    conda:
        "../envs/cellmapseg.yaml"
    script:
        "../scripts/select_caching.py"
