# Stages 4 and 5: sliding-window prediction of the validation crops with each model's best
# checkpoint (Zarr, the challenge's layout), then the CellMap challenge's scoring.


rule predict:
    input:
        summary=rules.train.output.summary,
        inventory=rules.inventory.output.csv,
    output:
        zarr=directory("results/{model}/predictions/predictions.zarr"),
        manifest="results/{model}/predictions/manifest.json",
    params:
        inference=config["inference"],
    threads: workflow.cores
    resources:
        gpu=min(CFG.train.gpus, 1),
    log:
        "results/logs/predict_{model}.log",
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
            "results/{model}/eval.csv",
            caption="../report/eval_csv.rst",
            category="2. Models",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "scores per crop (CSV)"},
        ),
        summary="results/{model}/eval_summary.json",
    log:
        "results/logs/evaluate_{model}.log",
    conda:
        "../envs/cellmapseg.yaml"
    script:
        "../scripts/evaluate.py"
