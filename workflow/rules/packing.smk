# packing: each feature shard's log-mel -> one float16 array and its index
# (results/packed/<shard>.npy, <shard>.tsv), from which training gathers whole
# batches (see jibjib/packing/). The pack is independent of the split
# and the labels; a shard is packed again only when its manifest changed, and
# then only its changed files are read from their npz.


rule pack:
    input:
        manifest=MANIFESTS_DIR / "{shard}.tsv",
    output:
        # update(): Snakemake keeps the previous pack for the job to copy from (it replaces it atomically).
        array=update("results/packed/{shard}.npy"),
        index=update("results/packed/{shard}.tsv"),
    log:
        "logs/pack/{shard}.log",
    conda:
        "../../envs/features.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    shell:
        "python -m jibjib pack --manifest={input.manifest:q} --features-dir=results/features"
        " --array={output.array:q} --index={output.index:q} 2> {log:q}"
