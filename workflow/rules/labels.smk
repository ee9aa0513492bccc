# Stage 2: feature manifests -> label index, QC table and the split by recording.
# Options are written `--name=value` so that a value starting with `-` (a
# data_dir or a pattern might) is never read as an option.


rule labels:
    input:
        manifests=feature_manifests(),
    output:
        labels=report("results/labels.tsv", caption="../report/labels.rst", category="Data"),
        qc=report("results/qc/files.tsv", caption="../report/qc.rst", category="Data"),
    params:
        data_dir=DATA_DIR,
        label_map=f"--label-map={shlex.quote(config['label_map'])}" if config["label_map"] else "",
        recording_pattern=config["split"]["recording_pattern"],
    log:
        "logs/labels.log",
    conda:
        "../../envs/features.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m jibjib labels --data-dir={params.data_dir:q} --manifests {input.manifests:q}"
        " --out={output.labels:q} --qc={output.qc:q} {params.label_map}"
        " --recording-pattern={params.recording_pattern:q} 2> {log:q}"


rule split:
    input:
        manifests=feature_manifests(),
    output:
        "results/split.tsv",
    params:
        fractions=config["split"]["fractions"],
        seed=config["split"]["seed"],
        recording_pattern=config["split"]["recording_pattern"],
    log:
        "logs/split.log",
    conda:
        "../../envs/features.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m jibjib split --manifests {input.manifests:q} --out={output:q}"
        " --train={params.fractions[train]} --val={params.fractions[val]} --test={params.fractions[test]}"
        " --seed={params.seed} --recording-pattern={params.recording_pattern:q} 2> {log:q}"
