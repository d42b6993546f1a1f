# Stages 4 and 5: sliding-window prediction of the validation crops with each model's best
# checkpoint (and each TTA variant's), then the CellMap challenge's scoring of every entry.
# One job per (entry, crop) for each, so the Slurm profile spreads the crops over the
# reservation's GPUs and a killed job costs one crop; the crops come from the inventory (a
# checkpoint: the DAG is known once it is written). A network's prediction keeps its
# probabilities (uint8), which tuned variants and ensembles are derived from (combine.smk).
# `predict` gathers the crops into predictions.zarr (the challenge's layout {crop}/{class},
# crop groups linked, not copied), `evaluate` their rows into eval.csv and eval_summary.json;
# both take seconds, so they run where snakemake runs, never queued behind a GPU job.


localrules:
    predict,
    evaluate,


rule predict_crop:
    wildcard_constraints:
        model=one_of(NETWORK),
    input:
        summary=trained_summary,
        inventory=rules.inventory.output.csv,
        caching=rules.select_caching.output.json,  # images the training store holds
    output:
        zarr=directory(str(R.crop_predictions("{model}", "{crop}"))),
        manifest=str(R.crop_manifest("{model}", "{crop}")),
        probabilities=directory(str(R.crop_probabilities("{model}", "{crop}"))),
    params:
        inference=config["inference"],
        entry=entry_params,
    threads: 1
    resources:
        gpu=min(CFG.train.gpus, 1),
    log:
        str(R.log("predict", "{model}_{crop}")),
    conda:
        "../envs/cellmapseg.yaml"
    script:
        "../scripts/predict.py"


rule predict:
    input:
        zarr=each_crop(R.crop_predictions),
        manifest=each_crop(R.crop_manifest),
    output:
        zarr=directory(str(R.predictions("{model}"))),
        manifest=str(R.manifest("{model}")),
    log:
        str(R.log("predict", "{model}")),
    conda:
        "../envs/cellmapseg.yaml"
    script:
        "../scripts/gather_predictions.py"


rule evaluate_crop:
    input:
        zarr=str(R.crop_predictions("{model}", "{crop}")),  # predict_crop or derive_crop
        inventory=rules.inventory.output.csv,
        # Zarr route: the truth's class grids (scored at the ground truth's resolution)
        manifest=[CFG.data.zarr.train_manifest] if CFG.data.zarr.enabled else [],
    output:
        csv=str(R.crop_eval("{model}", "{crop}")),
    log:
        str(R.log("evaluate", "{model}_{crop}")),
    conda:
        "../envs/cellmapseg.yaml"
    script:
        "../scripts/evaluate.py"


rule evaluate:
    input:
        csv=each_crop(R.crop_eval),
        inventory=rules.inventory.output.csv,
        predictions=rules.predict.output.manifest,  # eval.csv comes with its gathered store
    output:
        csv=report(
            str(R.eval_csv("{model}")),
            caption="../report/eval_csv.rst",
            category="2. Models",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "scores per crop (CSV)"},
        ),
        summary=str(R.eval_summary("{model}")),
    log:
        str(R.log("evaluate", "{model}")),
    conda:
        "../envs/cellmapseg.yaml"
    script:
        "../scripts/gather_scores.py"
