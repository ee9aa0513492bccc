# Stage 1: WAV -> per-file VGGish log-mel (results/features/<label>/<stem>.npz).
# One job per species folder; inside it, files whose content and front end are
# unchanged keep their npz.


rule features:
    input:
        species_inputs,
    output:
        manifest="results/features/{label}.tsv",
    params:
        data_dir=DATA_DIR,
        frontend=FRONTEND_JSON,
    log:
        "logs/features/{label}.log",
    conda:
        "../../envs/features.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    shell:
        "python -m jibjib features --data-dir {params.data_dir:q} --label {wildcards.label:q}"
        " --features-dir results/features --manifest {output.manifest:q}"
        " --frontend {params.frontend:q} 2> {log:q}"
