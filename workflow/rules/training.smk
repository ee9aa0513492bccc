# training: packed features + labels + split -> trained Keras models (results/models/<model>/);
# VGGish with a frozen trunk trains its head from the embedding cache (embeddings.smk).
# Tagged gpu=1 (train.gpus_per_task) so a workstation runs one training per GPU
# and a SLURM profile sends them to GPU nodes; on a machine without GPUs they
# run on the CPU. With train.nodes x train.tasks_per_node > 1 a SLURM job runs
# one training process per task, which train together (see training_resources).
# TensorFlow's own messages (devices, CUDA) go to logs/<stage>/<model>.tensorflow.log.
# A job whose inputs are unchanged in content (split.tsv rewritten the same, say) reuses
# the finished run's model in seconds (train.json: reused), docs/training.md#resume.


rule train_vggish:
    input:
        labels="results/labels.tsv",
        split="results/split.tsv",
        features=feature_manifests(),
        packed=packed_indexes(),
        embeddings=embedding_indexes("vggish"),
        # The trunk's starting weights: a checkpoint replaced at the same path retrains (through the trunk
        # and from the cache alike; the run's identity has the files' content digest).
        vggish_checkpoint=vggish_checkpoint_files(),
    output:
        model="results/models/vggish/model.keras",
        history="results/models/vggish/history.tsv",
        report="results/models/vggish/train.json",
    params:
        model="vggish",
        settings=lambda wildcards: training_settings("vggish"),
        launch=training_launcher,
        embeddings=embeddings_option("vggish"),
        out_dir=lambda wildcards, output: Path(output.model).parent,
        pseudo="",  # self-training's students (selftraining.smk): --pseudo-labels
    log:
        job="logs/train/vggish.log",
        tensorflow="logs/train/vggish.tensorflow.log",
    conda:
        "../../envs/tensorflow.yaml"
    threads: 8
    resources:
        **training_resources(),
        mem_mb=16000,
        runtime=24 * 60,
    shell:
        "JIBJIB_TF_LOG={log.tensorflow:q} {params.launch} python -m jibjib train --model {params.model} --labels {input.labels:q} --split {input.split:q}"
        " --features-dir results/features --out-dir {params.out_dir:q}"
        " --packed {input.packed:q} {params.embeddings} {params.pseudo} --settings {params.settings:q} --threads {threads} 2> {log.job:q}"


use rule train_vggish as train_convlstm with:
    input:
        labels="results/labels.tsv",
        split="results/split.tsv",
        features=feature_manifests(),
        packed=packed_indexes(),
    output:
        model="results/models/convlstm/model.keras",
        history="results/models/convlstm/history.tsv",
        report="results/models/convlstm/train.json",
    params:
        model="convlstm",
        settings=lambda wildcards: training_settings("convlstm"),
        launch=training_launcher,
        embeddings="",
        out_dir=lambda wildcards, output: Path(output.model).parent,
        pseudo="",
    log:
        job="logs/train/convlstm.log",
        tensorflow="logs/train/convlstm.tensorflow.log",
