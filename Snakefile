# jibjib: bird recordings -> features (packed) -> labels and split -> models -> reports -> export.
# The stages live in workflow/rules/<stage>.smk; the work is done by the jibjib package.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/packed.smk"
include: "workflow/rules/embeddings.smk"
include: "workflow/rules/labels.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/soundscapes.smk"
include: "workflow/rules/analysis.smk"


report: "workflow/report/workflow.rst"


rule all:
    input:
        "results/labels.tsv",
        "results/split.tsv",
        "results/qc/files.tsv",
        model_targets(),
    default_target: True
