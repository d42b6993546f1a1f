# Stages 4 and 5: sliding-window prediction of the validation crops with each model's best
# checkpoint (Zarr, the challenge's layout), then the CellMap challenge's scoring.


rule predict:
    input:
        summary=rules.train.output.summary,
        inventory=rules.inventory.output.csv,
        caching=rules.select_caching.output.json,  # images the training store holds
    output:
        zarr=directory(str(R.predictions("{model}"))),
        manifest=str(R.manifest("{model}")),
    params:
        inference=config["inference"],
    threads: workflow.cores
    resources:
        gpu=min(CFG.train.gpus, 1),
    log:
        str(R.log("predict", "{model}")),
    conda:
        "../envs/cellmapseg.yaml"
    script:
        "../scripts/predict.py"


rule evaluate:
    input:
        zarr=rules.predict.output.zarr,
        manifest=rules.predict.output.manifest,
        inventory=rules.inventory.output.csv,
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
        "../scripts/evaluate.py"
