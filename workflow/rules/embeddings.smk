# embeddings: with VGGish's trunk frozen (vggish.trainable head, fc2 or fc1_2;
# vggish.embedding_cache auto) each packed shard goes through the frozen part
# of the trunk once: results/embeddings/<shard>.npy holds the output of its
# last frozen layer for every patch, <shard>.tsv the index (see
# jibjib/embeddings/), and the head trains from them. The job reruns
# when its pack, the checkpoint, the cut or (without a checkpoint) train.seed
# changed, and then computes only the files whose content or frozen weights
# changed. Training settings are not its inputs: changing them retrains the
# head from the same cache.


rule embed:
    input:
        packed="results/packed/{shard}.tsv",
        array="results/packed/{shard}.npy",
        checkpoint=vggish_checkpoint_files(),
    output:
        # update(): Snakemake keeps the previous cache for the job to copy from (it replaces it atomically).
        array=update("results/embeddings/{shard}.npy"),
        index=update("results/embeddings/{shard}.tsv"),
    params:
        cut=lambda wildcards: EMBEDDING_PLAN.cut,
        weights=lambda wildcards: embed_weights_options(),
    log:
        job="logs/embed/{shard}.log",
        tensorflow="logs/embed/{shard}.tensorflow.log",
    conda:
        "../../envs/tensorflow.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    shell:
        "JIBJIB_TF_LOG={log.tensorflow:q} python -m jibjib embed --packed={input.packed:q} --cut={params.cut}"
        " {params.weights} --array={output.array:q} --index={output.index:q} --threads {threads} 2> {log.job:q}"
