# Stage 6 (Zarr route with a test manifest): the challenge's test crops predicted from their
# datasets' EM by the submission entry (submission.model, default the first model): by its
# network, or, for a tuned variant or an ensemble, from its members' kept test probabilities
# with the choices made on every validation crop; then packed at each crop's ground-truth grid
# by the official rules and checked against the manifest.

if CFG.data.zarr.test_manifest:

    rule predict_test:
        wildcard_constraints:
            model=one_of(NETWORK),
        input:
            summary=trained_summary,
            manifest=CFG.data.zarr.test_manifest,
        output:
            zarr=directory(str(R.test_predictions("{model}"))),
            manifest=str(R.test_manifest("{model}")),
            probabilities=directory(str(R.test_probabilities("{model}"))),
        params:
            inference=config["inference"],
            entry=entry_params,
            root=CFG.data.zarr.root,
        threads: 1
        resources:
            gpu=min(CFG.train.gpus, 1),
        log:
            str(R.log("predict_test", "{model}")),
        conda:
            "../envs/cellmapseg.yaml"
        script:
            "../scripts/predict_test.py"

    rule derive_test:
        wildcard_constraints:
            model=one_of(DERIVED),
        input:
            choices=str(R.choices("{model}")),
            probabilities=lambda w: [
                str(R.test_probabilities(s)) for s in CFG.entry(w.model).members
            ],
            manifests=lambda w: [str(R.test_manifest(s)) for s in CFG.entry(w.model).members],
        output:
            zarr=directory(str(R.test_predictions("{model}"))),
            manifest=str(R.test_manifest("{model}")),
        params:
            inference=config["inference"],
        log:
            str(R.log("derive_test", "{model}")),
        conda:
            "../envs/cellmapseg.yaml"
        script:
            "../scripts/derive_test.py"

    rule submit:
        input:
            zarr=str(R.test_predictions(SUBMISSION_MODEL)),
            manifest=CFG.data.zarr.test_manifest,
        output:
            zip=str(R.submission),
            json=str(R.submission.with_suffix(".json")),
        log:
            str(R.log("submit")),
        conda:
            "../envs/cellmapseg.yaml"
        script:
            "../scripts/submit.py"
