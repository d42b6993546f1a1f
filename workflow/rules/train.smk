# Stage 3: train each model config on its share of the reserved node (CPU on the embedded
# default). The job's GPUs, CPUs, memory and nodes come from the config (models.NAME.allocation,
# else train.allocation), so models with room on the node train side by side. One torchrun per
# node: --nproc_per_node = the job's GPUs (or train.cpu_ranks on CPU); more than one node
# rendezvous over c10d (cellmapseg.runtime.torchrun).
# Checkpoints live in results/{model}/train/checkpoints/ and are NOT declared outputs, so a job
# that dies keeps them (Snakemake deletes a failed job's outputs) and the rerun resumes.


rule train:
    wildcard_constraints:
        model=one_of(list(CFG.models)),
    input:
        inventory=rules.inventory.output.csv,
        caching=rules.select_caching.output.json,
    output:
        summary=str(R.train("{model}").summary),
        metrics=str(R.train("{model}").metrics),
    params:
        model=lambda w: config["models"][w.model],  # rerun when this model's config changes
        train=config["train"],
    threads: workflow.cores
    resources:
        gpu=job_gpus,
        gres=job_gres,
        nodes=lambda w: CFG.allocation(w.model).nodes,
        cpus_per_task=lambda w: CFG.allocation(w.model).cpus,
        mem_mb=lambda w: CFG.allocation(w.model).mem_mb,
    log:
        str(R.log("train", "{model}")),
    conda:
        "../envs/cellmapseg.yaml"
    script:
        "../scripts/train.py"
