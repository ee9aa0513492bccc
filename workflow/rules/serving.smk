# serving: trained model + its evaluation -> SavedModel for TensorFlow Serving
# (results/export/<model>/<version>/, the version in use named by
# results/export/<model>/current.json, the rule's output), with the front end inside the graph;
# export.tflite adds the TFLite files, export.legacy_serving the old query
# service's serving_default.


def export_options(wildcards):
    """The export command's flags for export.tflite and export.legacy_serving."""
    options = []
    if SETTINGS.export.tflite:
        # The val windows the int8 analysis file is checked on come from the features.
        options.append("--tflite --features-dir=results/features")
    if SETTINGS.export.legacy_serving:
        options.append("--legacy-serving")
    return " ".join(options)


for _model in MODEL_NAMES:

    rule:
        name:
            f"export_{_model}"
        input:
            model=f"results/models/{_model}/model.keras",
            trained=f"results/models/{_model}/train.json",
            metrics=f"results/eval/{_model}/metrics.json",
            thresholds=f"results/eval/{_model}/thresholds.tsv",
            labels="results/labels.tsv",
            split="results/split.tsv",
            features=feature_manifests() if SETTINGS.export.tflite else [],
        output:
            current_export(_model),
        params:
            model_dir=lambda wildcards, input: Path(input.model).parent,
            eval_dir=lambda wildcards, input: Path(input.metrics).parent,
            frontend=FRONTEND_JSON,
            top_k=SETTINGS.export.top_k,
            # Flags as params, so changing one reruns the export (Snakemake's params rerun trigger).
            tflite=SETTINGS.export.tflite,
            legacy_serving=SETTINGS.export.legacy_serving,
            options=export_options,
            model_folder=lambda wildcards, output: Path(output[0]).parent,
            version=SETTINGS.export.version,
            keep_versions=SETTINGS.export.keep_versions,
        log:
            job=f"logs/export/{_model}.log",
            tensorflow=f"logs/export/{_model}.tensorflow.log",
        conda:
            "../../envs/tensorflow.yaml"
        threads: 2
        resources:
            # TFLite conversion of VGGish peaked at 8.9 GB (measured, 2026-12-02): each conversion holds
            # several copies of its 289 MB of weights beside the frozen graph.
            mem_mb=16000 if SETTINGS.export.tflite else 8000,
            runtime=60,
        shell:
            # The export needs no GPU; hiding them keeps TensorFlow off a GPU a training may be using.
            "CUDA_VISIBLE_DEVICES= JIBJIB_TF_LOG={log.tensorflow:q} python -m jibjib export --model-dir {params.model_dir:q} --eval-dir {params.eval_dir:q}"
            " --labels {input.labels:q} --split {input.split:q} --frontend {params.frontend:q}"
            " --top-k {params.top_k} {params.options} --out {params.model_folder:q} --version {params.version}"
            " --keep-versions {params.keep_versions} 2> {log.job:q}"
