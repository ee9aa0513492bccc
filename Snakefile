# jibjib: bird recordings -> features -> labels and split -> packed features (and embeddings) -> models
# -> evaluation -> export -> analysis of field recordings. Each stage's rules live in
# workflow/rules/<stage>.smk and call the jibjib command, whose code sits in jibjib/<stage>/.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/labels.smk"
include: "workflow/rules/packing.smk"
include: "workflow/rules/embeddings.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/serving.smk"
include: "workflow/rules/analysis.smk"
# Last: its students are exported and evaluated on the soundscapes with the serving and analysis rules.
include: "workflow/rules/selftraining.smk"


report: "workflow/report/workflow.rst"


rule all:
    input:
        "results/labels.tsv",
        "results/split.tsv",
        "results/qc/files.tsv",
        model_targets(),
    default_target: True
