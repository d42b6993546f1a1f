# Stage 3: train each model config on the reserved GPU resource (CPU on the embedded default).
# torchrun --standalone --nnodes=1 --nproc_per_node={resources.gpu} (or train.cpu_ranks on CPU).
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
        gpu=CFG.train.gpus,
    log:
        str(R.log("train", "{model}")),
    conda:
        "../envs/cellmapseg.yaml"
    script:
        "../scripts/train.py"
