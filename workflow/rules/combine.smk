# Stage 4b: tuned variants and ensembles, from the networks' kept probabilities (no network
# runs again). `sweep_crop` scores a validation crop at every tuning threshold, `choose` picks
# each class's threshold (and member) per cross-fitting fold and on every crop (the
# submission's), `derive_crop` writes a crop's predictions with the choices of its fold, which
# were made on the other folds' crops. The predict gather and evaluate rules take the result
# as they take a network's. All CPU work, one job per (entry, crop); choosing takes seconds.


localrules:
    choose,


rule sweep_crop:
    wildcard_constraints:
        model=one_of(SWEPT),
    input:
        probabilities=lambda w: [
            str(R.crop_probabilities(s, w.crop)) for s in CFG.sweep_sources(w.model)
        ],
        inventory=rules.inventory.output.csv,
        manifest=[CFG.data.zarr.train_manifest] if CFG.data.zarr.enabled else [],
    output:
        csv=str(R.crop_sweep("{model}", "{crop}")),
    params:
        tuning=config["tuning"],
        inference=config["inference"],
    log:
        str(R.log("sweep", "{model}_{crop}")),
    conda:
        "../envs/cellmapseg.yaml"
    script:
        "../scripts/sweep.py"


rule choose:
    wildcard_constraints:
        model=one_of(DERIVED),
    input:
        unpack(candidate_tables),
    output:
        json=str(R.choices("{model}")),
    params:
        tuning=config["tuning"],
        inference=config["inference"],
        entry=entry_params,
    log:
        str(R.log("choose", "{model}")),
    conda:
        "../envs/cellmapseg.yaml"
    script:
        "../scripts/choose.py"


rule derive_crop:
    wildcard_constraints:
        model=one_of(DERIVED),
    input:
        choices=str(R.choices("{model}")),
        probabilities=lambda w: [
            str(R.crop_probabilities(s, w.crop)) for s in CFG.entry(w.model).members
        ],
        inventory=rules.inventory.output.csv,
    output:
        zarr=directory(str(R.crop_predictions("{model}", "{crop}"))),
        manifest=str(R.crop_manifest("{model}", "{crop}")),
    params:
        inference=config["inference"],
    log:
        str(R.log("derive", "{model}_{crop}")),
    conda:
        "../envs/cellmapseg.yaml"
    script:
        "../scripts/derive.py"
