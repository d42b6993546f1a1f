# Stage 2: measure the caching strategies' memory with ranks started like training, then choose
# the strategy training will use (one for all models: they share the node's store, each within
# its own job's memory). On the cluster the probe runs in the largest of the training jobs'
# allocations (the same node type and ranks per node): see its resources.


rule memory_probe:
    input:
        inventory=rules.inventory.output.csv,
    output:
        json=str(R.memory),
        config=str(layout.resolved_config(R.memory)),
    params:
        caching=config["caching"],
        train=config["train"],
    threads: CFG.probe_ranks
    resources:
        gpu=CFG.probe_allocation.gpus,
        cpus_per_task=CFG.probe_allocation.cpus,
        mem_mb=CFG.probe_allocation.mem_mb,
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
