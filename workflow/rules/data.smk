# Stage 1: the data. The synthetic dataset (embedded default) or the user's datalist, then the
# validated inventory every later stage reads.

if CFG.data.synthetic.enabled:

    rule synthetic_data:
        output:
            datalist=CFG.data.datalist,
        params:
            data=config["data"],  # rerun when the data settings change
        log:
            str(R.log("synthetic_data")),
        conda:
            "../envs/cellmapseg.yaml"
        script:
            "../scripts/synthetic_data.py"


# A checkpoint: the per-crop prediction and scoring jobs are the validation crops it lists.
checkpoint inventory:
    input:
        datalist=CFG.data.datalist,
    output:
        csv=str(R.inventory),
        config=str(layout.resolved_config(R.inventory)),
    params:
        data=config["data"],
    threads: workflow.cores  # crops read in parallel (capped by the job's CPUs)
    log:
        str(R.log("inventory")),
    conda:
        "../envs/cellmapseg.yaml"
    script:
        "../scripts/inventory.py"
