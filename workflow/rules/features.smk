# features: audio (WAV, FLAC, Ogg, MP3) -> per-file VGGish log-mel (results/features/<label>/<stem>.npz),
# and the QC table that accounts for every file (results/qc/files.tsv).
# One job per shard of species folders (features.shards, each species by a hash
# of its name; see jibjib/features/inventory.py); inside it, files whose content and
# front end are unchanged keep their npz.
#
# The job's input is not the recordings but the shard's content signature
# (results/sources/<shard>.tsv: path, size and content of every file), which
# is rewritten at parse time only when a file was added, removed or changed
# content. So a checkout or copy that only touches modification times reruns
# nothing, here or downstream. The job is handed the same signature and judges
# each npz by the SHA-256 recorded there; it hashes a file only if the
# signature lists it by a stamp (not hashed yet) and an npz already exists.
#
# Options are written `--name=value`: a species folder named `-x` would
# otherwise be read as an option.

import os

from jibjib.features.inventory import refresh_signatures

# Only the process that plans the run refreshes the signatures; jobs that
# re-read the Snakefile on a cluster node find them written.
if workflow.is_main_process:
    _sources = refresh_signatures(DATA_DIR, INVENTORY, SOURCES_DIR, MANIFESTS_DIR, SHARD_COUNT,
                                  workers=min(8, os.cpu_count() or 1))
    if _sources.summary():
        print(f"sources: {_sources.summary()}; {len(_sources.changed_shards)} of {len(SHARDS)} shards changed",
              file=sys.stderr)


rule features:
    input:
        sources=SOURCES_DIR / "{shard}.tsv",
    output:
        manifest=MANIFESTS_DIR / "{shard}.tsv",
    params:
        data_dir=DATA_DIR,
        labels=shard_labels,
        frontend=FRONTEND_JSON,
    log:
        "logs/features/{shard}.log",
    conda:
        "../../envs/features.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    shell:
        "python -m jibjib features --data-dir={params.data_dir:q} {params.labels}"
        " --features-dir=results/features --manifest={output.manifest:q}"
        " --sources={input.sources:q} --frontend={params.frontend:q} 2> {log:q}"


# Its own job, never failing for a species without usable files: when `labels`
# fails, Snakemake deletes that job's outputs, and this table says why.
rule qc:
    input:
        manifests=feature_manifests(),
    output:
        report("results/qc/files.tsv", caption="../report/qc.rst", category="Data"),
    params:
        data_dir=DATA_DIR,
    log:
        "logs/qc.log",
    conda:
        "../../envs/features.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m jibjib qc --data-dir={params.data_dir:q} --manifests {input.manifests:q}"
        " --out={output:q} 2> {log:q}"
