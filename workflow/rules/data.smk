# Stage 1: the data. The synthetic dataset (embedded default) or the user's datalist (NIfTI
# route), or the challenge's Zarr crops at the training voxel size (Zarr route: a datalist of
# references read in place, or of NIfTI copies); then the validated inventory every later
# stage reads.

if CFG.data.synthetic.enabled and not CFG.data.synthetic.zarr:

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


if CFG.data.synthetic.zarr:

    rule synthetic_zarr:
        output:
            train=CFG.data.zarr.train_manifest,  # written last: the dataset is complete
            test=CFG.data.zarr.test_manifest,
            summary=str(layout.synthetic_summary(CFG.data.zarr.train_manifest)),
        params:
            data=config["data"],
            root=CFG.data.zarr.root,
        log:
            str(R.log("synthetic_zarr")),
        conda:
            "../envs/cellmapseg.yaml"
        script:
            "../scripts/synthetic_zarr.py"


if CFG.data.zarr.enabled:

    rule convert:
        input:
            manifest=CFG.data.zarr.train_manifest,
            # the generator's validation split, when it wrote the data
            split=[rules.synthetic_zarr.output.summary] if CFG.data.synthetic.zarr else [],
        output:
            datalist=CFG.data.datalist,
        params:
            data=config["data"],
            root=CFG.data.zarr.root,
        log:
            str(R.log("convert")),
        conda:
            "../envs/cellmapseg.yaml"
        script:
            "../scripts/convert.py"


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
