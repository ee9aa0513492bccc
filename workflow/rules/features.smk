# Stage 1: WAV -> per-file VGGish log-mel (results/features/<label>/<stem>.npz).
# One job per species folder; inside it, files whose content and front end are
# unchanged keep their npz.
#
# The job's input is not the WAVs but the species' content signature
# (results/sources/<label>.tsv: path, size and SHA-256 of every file), which
# is rewritten at parse time only when a file was added, removed or changed
# content. So a checkout or copy that only touches modification times reruns
# nothing, here or downstream (see jibjib/inventory.py). The job is handed
# the same signature, so it judges each npz by the recorded SHA-256 instead of
# hashing the files again.
#
# Options are written `--name=value`: a species folder named `-x` would
# otherwise be read as an option.

import os

from jibjib.inventory import refresh_signatures

SOURCES_DIR = Path("results/sources")

# Only the process that plans the run refreshes the signatures; jobs that
# re-read the Snakefile on a cluster node find them written.
if workflow.is_main_process:
    _sources = refresh_signatures(DATA_DIR, INVENTORY, SOURCES_DIR, workers=min(8, os.cpu_count() or 1))
    if _sources.hashed_files:
        print(
            f"sources: hashed {_sources.hashed_files} of {_sources.files} files "
            f"({_sources.hashed_bytes / 1e6:.0f} MB) in {_sources.seconds:.1f} s; "
            f"{len(_sources.changed_species)} species changed",
            file=sys.stderr,
        )


rule features:
    input:
        sources=SOURCES_DIR / "{label}.tsv",
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
        "python -m jibjib features --data-dir={params.data_dir:q} --label={wildcards.label:q}"
        " --features-dir=results/features --manifest={output.manifest:q}"
        " --sources={input.sources:q} --frontend={params.frontend:q} 2> {log:q}"
