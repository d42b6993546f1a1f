# Stage 1: the data. The synthetic dataset (embedded default) or the user's datalist, then the
# validated inventory every later stage reads.

if CFG.data.synthetic.enabled:

    rule synthetic_data:
        output:
            datalist=CFG.data.datalist,
        params:
            data=config["data"],  # rerun when the data settings change
        log:
            "results/logs/synthetic_data.log",
        conda:
            "../envs/cellmapseg.yaml"
        script:
            "../scripts/synthetic_data.py"


rule inventory:
    input:
        datalist=CFG.data.datalist,
    output:
        csv="results/data/inventory.csv",
        config="results/data/inventory.config.yaml",
    params:
        data=config["data"],
    threads: 2
    log:
        "results/logs/inventory.log",
    conda:
        "../envs/cellmapseg.yaml"
    script:
        "../scripts/inventory.py"
