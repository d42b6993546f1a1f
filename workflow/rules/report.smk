# Stage 6: what the user reads. Per-model figures, the memory probe and caching decision as pages,
# and the comparison across models; `snakemake --report results/report.html` gathers them
# (categories are numbered so the report lists the comparison first).

rule model_report:
    wildcard_constraints:
        model=one_of(list(CFG.models)),
    input:
        metrics=rules.train.output.metrics,
        summary=rules.evaluate.output.summary,
        zarr=rules.predict.output.zarr,
        inventory=rules.inventory.output.csv,
    output:
        curves=model_item("curves", "training_curves.rst", "training curves"),
        scores=model_item("scores", "scores.rst", "per-class scores"),
        examples=model_item("examples", "examples.rst", "example slices"),
    log:
        str(R.log("model_report", "{model}")),
    conda:
        "../envs/cellmapseg.yaml"
    script:
        "../scripts/model_report.py"


# A variant's or an ensemble's page: its scores and example slices (no training of its own).
rule entry_report:
    wildcard_constraints:
        model=one_of([e for e in ENTRIES if e not in CFG.models]),
    input:
        summary=rules.evaluate.output.summary,
        zarr=rules.predict.output.zarr,
        inventory=rules.inventory.output.csv,
        trained=trained_summary,  # its training's config holds the label values
    output:
        scores=model_item("scores", "scores.rst", "per-class scores"),
        examples=model_item("examples", "examples.rst", "example slices"),
    log:
        str(R.log("model_report", "{model}")),
    conda:
        "../envs/cellmapseg.yaml"
    script:
        "../scripts/entry_report.py"


rule probe_report:
    input:
        memory=rules.memory_probe.output.json,
        caching=rules.select_caching.output.json,
    output:
        memory=report(
            str(R.probe_report["memory"]),
            caption="../report/memory.rst",
            category="3. Memory and caching",
            labels={"page": "memory probe"},
        ),
        caching=report(
            str(R.probe_report["caching"]),
            caption="../report/caching.rst",
            category="3. Memory and caching",
            labels={"page": "caching decision"},
        ),
    log:
        str(R.log("probe_report")),
    conda:
        "../envs/cellmapseg.yaml"
    script:
        "../scripts/probe_report.py"


rule comparison:
    input:
        train=expand(rules.train.output.summary, model=list(CFG.models)),
        evaluation=expand(rules.evaluate.output.summary, model=ENTRIES),
        tables=expand(rules.evaluate.output.csv, model=ENTRIES),  # bootstrap intervals
        manifests=expand(rules.predict.output.manifest, model=ENTRIES),  # prediction time
        choices=expand(rules.choose.output.json, model=DERIVED),
    output:
        csv=report(
            str(R.comparison()["csv"]),
            caption="../report/comparison_csv.rst",
            category="1. Comparison",
            labels={"item": "table (CSV, every column)"},
        ),
        md=str(R.comparison()["md"]),
        html=report(
            str(R.comparison()["html"]),
            caption="../report/comparison.rst",
            category="1. Comparison",
            labels={"item": "table"},
        ),
        png=report(
            str(R.comparison()["png"]),
            caption="../report/comparison_figure.rst",
            category="1. Comparison",
            labels={"item": "per-class scores figure"},
        ),
        rst=str(R.comparison()["rst"]),
        leads=report(
            str(R.comparison()["leads"]),
            caption="../report/comparison_leads.rst",
            category="1. Comparison",
            labels={"item": "leads (paired bootstrap)"},
        ),
    params:
        models=list(config["models"]),
        entries=ENTRIES,
        bootstrap=config["bootstrap"],
    log:
        str(R.log("comparison")),
    conda:
        "../envs/cellmapseg.yaml"
    script:
        "../scripts/comparison.py"
