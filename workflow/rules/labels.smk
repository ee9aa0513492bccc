# labels: the QC table -> the label index, and the feature manifests -> the split by recording.
# Options are written `--name=value` so that a value starting with `-` (a
# data_dir or a pattern might) is never read as an option.

# The split's memory of earlier assignments (docs/training.md, "The split"). Deliberately no
# declared output: Snakemake deletes a job's outputs before running it.
SPLIT_LEDGER = "results/split_ledger.tsv"
# Folder names of non-event audio, for labels (never a class) and split (split.tsv's empty `species`).
BACKGROUND_OPTION = ",".join(SETTINGS.labels.background)


rule labels:
    input:
        qc="results/qc/files.tsv",
    output:
        report("results/labels.tsv", caption="../report/labels.rst", category="Data"),
    params:
        label_map=f"--label-map={shlex.quote(SETTINGS.label_map)}" if SETTINGS.label_map else "",
        recording_pattern=SETTINGS.split.recording_pattern,
        background=BACKGROUND_OPTION,
    log:
        "logs/labels.log",
    conda:
        "../../envs/features.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m jibjib labels --qc={input.qc:q} --out={output:q} {params.label_map}"
        " --recording-pattern={params.recording_pattern:q} --background={params.background:q} 2> {log:q}"


rule split:
    input:
        manifests=feature_manifests(),
    output:
        "results/split.tsv",
    params:
        fractions=SETTINGS.split.fractions,
        seed=SETTINGS.split.seed,
        min_eval_recordings=SETTINGS.split.min_eval_recordings,
        recording_pattern=SETTINGS.split.recording_pattern,
        ledger=SPLIT_LEDGER,
        background=BACKGROUND_OPTION,
    log:
        "logs/split.log",
    conda:
        "../../envs/features.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m jibjib split --manifests {input.manifests:q} --out={output:q}"
        " --train={params.fractions.train} --val={params.fractions.val} --test={params.fractions.test}"
        " --seed={params.seed} --min-eval-recordings={params.min_eval_recordings}"
        " --recording-pattern={params.recording_pattern:q} --ledger={params.ledger:q}"
        " --background={params.background:q} 2> {log:q}"
