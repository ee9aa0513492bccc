# evaluation: trained model -> evaluation on the test split (results/eval/<model>/).
# The val split only tunes the calibration temperature and the per-class thresholds
# (the window thresholds on the windows analyze cuts, at analyze.hop_seconds).
# With annotated soundscapes, the markdown report is test_report.md and the
# soundscape stage writes report.md from it with its own section appended.

REPORT_NAME = "test_report.md" if SETTINGS.soundscapes.audio_dir else "report.md"

for _model in MODEL_NAMES:

    rule:
        name:
            f"evaluate_{_model}"
        input:
            model=f"results/models/{_model}/model.keras",
            history=f"results/models/{_model}/history.tsv",
            trained=f"results/models/{_model}/train.json",
            labels="results/labels.tsv",
            split="results/split.tsv",
            features=feature_manifests(),
        output:
            metrics=report(f"results/eval/{_model}/metrics.json", caption="../report/metrics.rst", **report_place(_model)),
            summary=f"results/eval/{_model}/{REPORT_NAME}" if SETTINGS.soundscapes.audio_dir else
                report(f"results/eval/{_model}/report.md", caption="../report/summary.rst", **report_place(_model)),
            file_scores=f"results/eval/{_model}/file_scores.tsv",
            confusion=report(f"results/eval/{_model}/confusion.tsv", caption="../report/confusion.rst", **report_place(_model)),
            confusion_png=report(f"results/eval/{_model}/confusion.png", caption="../report/confusion.rst", **report_place(_model)),
            reliability=report(f"results/eval/{_model}/reliability.png", caption="../report/reliability.rst", **report_place(_model)),
            curves=report(f"results/eval/{_model}/training_curves.png", caption="../report/curves.rst", **report_place(_model)),
            thresholds=report(f"results/eval/{_model}/thresholds.tsv", caption="../report/thresholds.rst", **report_place(_model)),
        params:
            model_dir=lambda wildcards, input: Path(input.model).parent,
            out_dir=lambda wildcards, output: Path(output.metrics).parent,
            target_precision=SETTINGS.evaluate.target_precision,
            min_support=SETTINGS.evaluate.min_threshold_support,
            top_k=SETTINGS.evaluate.top_k,
            frontend=FRONTEND_JSON,
            # Window thresholds are fitted on the windows analyze cuts, at its hop.
            hop=hop_option(),
            report_name=REPORT_NAME,
        log:
            job=f"logs/evaluate/{_model}.log",
            tensorflow=f"logs/evaluate/{_model}.tensorflow.log",
        conda:
            "../../envs/tensorflow.yaml"
        threads: 4
        resources:
            gpu=1,
            mem_mb=8000,
            runtime=4 * 60,
        shell:
            "JIBJIB_TF_LOG={log.tensorflow:q} python -m jibjib evaluate --model-dir {params.model_dir:q} --labels {input.labels:q}"
            " --split {input.split:q} --features-dir results/features --out-dir {params.out_dir:q}"
            " --target-precision {params.target_precision} --min-threshold-support {params.min_support}"
            " --top-k {params.top_k} --frontend {params.frontend:q} {params.hop} --report-name {params.report_name}"
            " --threads {threads} 2> {log.job:q}"
