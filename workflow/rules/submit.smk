# Stage 6 (Zarr route with a test manifest): the challenge's test crops predicted from their
# datasets' EM by the submission model (submission.model, default the first model), then packed
# at each crop's ground-truth grid by the official rules and checked against the manifest.

if CFG.data.zarr.test_manifest:

    rule predict_test:
        input:
            summary=rules.train.output.summary,
            manifest=CFG.data.zarr.test_manifest,
        output:
            zarr=directory(str(R.test_predictions("{model}"))),
            manifest=str(R.test_manifest("{model}")),
        params:
            inference=config["inference"],
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
