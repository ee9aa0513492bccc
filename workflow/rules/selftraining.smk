# selftraining: unlabelled field audio (self_training.audio_dir) -> features -> per round: the teacher's window
# scores -> pseudo-labels -> a student trained on the labelled data plus the pseudo-labelled windows ->
# its evaluation -> the next round; results/selftrain/<model>/report.md puts teacher and students side by side.
# Only with self_training.audio_dir and rounds > 0, for self_training.models. With annotated soundscapes
# (soundscapes.audio_dir) every student is also exported and evaluated on them, as its teacher is.
#
# Staleness by content: the unlabelled features job has the folder's content digest as a parameter (names
# and bytes, not times), and keeps the npz of every recording whose content is unchanged. A new recording
# reruns it (one file computed) and, from its manifest on, the scores, pseudo-labels, students, their
# evaluations and the report; the teacher and its evaluation stay. A touched file reruns nothing.

SELF_TRAINING = SETTINGS.self_training


wildcard_constraints:
    round=r"[1-9]\d*",


rule unlabelled_features:
    output:
        manifest=f"{SELFTRAIN_DIR}/unlabelled.tsv",
    params:
        audio_dir=SELF_TRAINING.audio_dir or "",
        features_dir=f"{SELFTRAIN_DIR}/features",
        content=unlabelled_digest(),
        frontend=FRONTEND_JSON,
    log:
        "logs/selftrain/unlabelled_features.log",
    conda:
        "../../envs/features.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    shell:
        "python -m jibjib unlabelled-features --audio-dir={params.audio_dir:q} --features-dir={params.features_dir:q}"
        " --manifest={output.manifest:q} --frontend={params.frontend:q} 2> {log:q}"


rule window_scores:
    input:
        model=lambda wildcards: f"{teacher_dir(wildcards)}/model.keras",
        trained=lambda wildcards: f"{teacher_dir(wildcards)}/train.json",
        manifest=rules.unlabelled_features.output.manifest,
    output:
        scores=f"{SELFTRAIN_DIR}/{{model}}/round-{{round}}/scores.npz",
    params:
        model_dir=teacher_dir,
        frontend=FRONTEND_JSON,
        hop="" if SELF_TRAINING.hop_seconds is None else f"--hop={SELF_TRAINING.hop_seconds}",
    log:
        job=f"logs/selftrain/{{model}}/round-{{round}}/window_scores.log",
        tensorflow=f"logs/selftrain/{{model}}/round-{{round}}/window_scores.tensorflow.log",
    wildcard_constraints:
        model="|".join(MODEL_NAMES),
    conda:
        "../../envs/tensorflow.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=4 * 60,
    shell:
        "JIBJIB_TF_LOG={log.tensorflow:q} python -m jibjib window-scores --model-dir={params.model_dir:q}"
        " --manifest={input.manifest:q} --out={output.scores:q} --frontend={params.frontend:q} {params.hop}"
        " --threads={threads} 2> {log.job:q}"


rule pseudo_labels:
    input:
        scores=rules.window_scores.output.scores,
        manifest=rules.unlabelled_features.output.manifest,
        thresholds=lambda wildcards: f"{teacher_eval_dir(wildcards)}/thresholds.tsv",
    output:
        windows=f"{SELFTRAIN_DIR}/{{model}}/round-{{round}}/pseudo_labels.npz",
        table=f"{SELFTRAIN_DIR}/{{model}}/round-{{round}}/pseudo_labels.tsv",
    params:
        settings=self_training_options(),
        frontend=FRONTEND_JSON,
    log:
        f"logs/selftrain/{{model}}/round-{{round}}/pseudo_labels.log",
    wildcard_constraints:
        model="|".join(MODEL_NAMES),
    conda:
        "../../envs/tensorflow.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m jibjib pseudo-label --scores={input.scores:q} --manifest={input.manifest:q}"
        " --thresholds={input.thresholds:q} --settings={params.settings:q} --frontend={params.frontend:q}"
        " --out={output.windows:q} --table={output.table:q} 2> {log:q}"


# The student: the model's own training run (training.smk) with the pseudo-labelled windows in every batch.
use rule train_convlstm as train_student with:
    input:
        labels="results/labels.tsv",
        split="results/split.tsv",
        features=feature_manifests(),
        packed=packed_indexes(),
        pseudo=rules.pseudo_labels.output.windows,
    output:
        model=f"{SELFTRAIN_DIR}/{{model}}/round-{{round}}/model/model.keras",
        history=f"{SELFTRAIN_DIR}/{{model}}/round-{{round}}/model/history.tsv",
        report=f"{SELFTRAIN_DIR}/{{model}}/round-{{round}}/model/train.json",
    params:
        model=lambda wildcards: wildcards.model,
        settings=lambda wildcards: training_settings(wildcards.model),
        launch=training_launcher,
        embeddings="",  # the pseudo-labelled windows are not in the embedding cache
        out_dir=lambda wildcards, output: Path(output.model).parent,
        pseudo=lambda wildcards, input: f"--pseudo-labels={shlex.quote(input.pseudo)} "
                                        f"--pseudo-share={SELF_TRAINING.batch_share}",
    log:
        job=f"logs/selftrain/{{model}}/round-{{round}}/train.log",
        tensorflow=f"logs/selftrain/{{model}}/round-{{round}}/train.tensorflow.log",
    wildcard_constraints:
        model="|".join(MODEL_NAMES),


# Each student evaluated as its teacher was (evaluation.smk), on the same test split.
use rule evaluate_convlstm as evaluate_student with:
    input:
        model=rules.train_student.output.model,
        history=rules.train_student.output.history,
        trained=rules.train_student.output.report,
        labels="results/labels.tsv",
        split="results/split.tsv",
        features=feature_manifests(),
    output:
        metrics=f"{SELFTRAIN_DIR}/{{model}}/round-{{round}}/eval/metrics.json",
        summary=f"{SELFTRAIN_DIR}/{{model}}/round-{{round}}/eval/{REPORT_NAME}",
        file_scores=f"{SELFTRAIN_DIR}/{{model}}/round-{{round}}/eval/file_scores.tsv",
        confusion=f"{SELFTRAIN_DIR}/{{model}}/round-{{round}}/eval/confusion.tsv",
        confusion_png=f"{SELFTRAIN_DIR}/{{model}}/round-{{round}}/eval/confusion.png",
        reliability=f"{SELFTRAIN_DIR}/{{model}}/round-{{round}}/eval/reliability.png",
        curves=f"{SELFTRAIN_DIR}/{{model}}/round-{{round}}/eval/training_curves.png",
        thresholds=f"{SELFTRAIN_DIR}/{{model}}/round-{{round}}/eval/thresholds.tsv",
    log:
        job=f"logs/selftrain/{{model}}/round-{{round}}/evaluate.log",
        tensorflow=f"logs/selftrain/{{model}}/round-{{round}}/evaluate.tensorflow.log",
    wildcard_constraints:
        model="|".join(MODEL_NAMES),


# With annotated soundscapes: each student exported and evaluated on them as its teacher is (serving.smk,
# analysis.smk), so the report has the field figures of every round.
ROUND_DIR = f"{SELFTRAIN_DIR}/{{model}}/round-{{round}}"

if SOUNDSCAPE_DIR:

    use rule export_convlstm as export_student with:
        input:
            model=rules.train_student.output.model,
            trained=rules.train_student.output.report,
            metrics=f"{ROUND_DIR}/eval/metrics.json",
            thresholds=f"{ROUND_DIR}/eval/thresholds.tsv",
            labels="results/labels.tsv",
            split="results/split.tsv",
            features=feature_manifests() if SETTINGS.export.tflite else [],
        output:
            f"{ROUND_DIR}/export/current.json",
        log:
            job=f"logs/selftrain/{{model}}/round-{{round}}/export.log",
            tensorflow=f"logs/selftrain/{{model}}/round-{{round}}/export.tensorflow.log",
        wildcard_constraints:
            model="|".join(MODEL_NAMES),

    rule:
        name:
            analysis_rule_name("soundscape_scores_student")
        input:
            export=f"{ROUND_DIR}/export/current.json",
            sources=SOUNDSCAPE_SOURCES / "shard-00.tsv",
        output:
            files=f"{ROUND_DIR}/eval/soundscapes/files.tsv",
            detections=f"{ROUND_DIR}/eval/soundscapes/detections.tsv",
        params:
            audio_dir=SOUNDSCAPE_DIR,
            out_dir=lambda wildcards, output: Path(output.files).parent,
            scores=lambda wildcards, output: Path(output.files).parent / "scores",
            hop=hop_option(),
            options=table_options(),
            engine=engine_option(),
        log:
            job=f"logs/selftrain/{{model}}/round-{{round}}/soundscapes.analyze.log",
            tensorflow=f"logs/selftrain/{{model}}/round-{{round}}/soundscapes.analyze.tensorflow.log",
        wildcard_constraints:
            model="|".join(MODEL_NAMES),
        conda:
            "../../envs/tensorflow.yaml"
        threads: ANALYSIS_THREADS
        resources:
            **analysis_resources(runtime=60),
        shell:
            SOUNDSCAPE_SCORES_SHELL

    rule evaluate_soundscapes_student:
        input:
            files=f"{ROUND_DIR}/eval/soundscapes/files.tsv",
            thresholds=f"{ROUND_DIR}/eval/thresholds.tsv",
            test_report=f"{ROUND_DIR}/eval/{REPORT_NAME}",
            annotations=SOUNDSCAPE_SOURCES / ANNOTATIONS_NAME,
        output:
            summary=f"{ROUND_DIR}/eval/soundscapes.json",
            section=f"{ROUND_DIR}/eval/soundscapes.md",
            report=f"{ROUND_DIR}/eval/report.md",
            figure=f"{ROUND_DIR}/eval/soundscape.png",
        params:
            scores=lambda wildcards, input: Path(input.files).parent / "scores",
            annotations=SOUNDSCAPE_ANNOTATIONS,
            audio_dir=SOUNDSCAPE_DIR,
            out_dir=lambda wildcards, output: Path(output.summary).parent,
            model=lambda wildcards: f"{wildcards.model} round {wildcards.round}",
            options=detection_options(),
        log:
            f"logs/selftrain/{{model}}/round-{{round}}/soundscapes.log",
        wildcard_constraints:
            model="|".join(MODEL_NAMES),
        conda:
            "../../envs/tensorflow.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        shell:
            EVALUATE_SOUNDSCAPES_SHELL


rule selftrain_report:
    input:
        metrics=lambda wildcards: round_files(wildcards, "metrics.json", "eval/metrics.json"),
        pseudo=lambda wildcards: round_files(wildcards, "", "pseudo_labels.tsv")[1:],
        soundscapes=lambda wildcards: (round_files(wildcards, "soundscapes.json", "eval/soundscapes.json")
                                       if SOUNDSCAPE_DIR else []),
    output:
        table=f"{SELFTRAIN_DIR}/{{model}}/report.tsv",
        summary=report(f"{SELFTRAIN_DIR}/{{model}}/report.md", caption="../report/selftrain.rst",
                       category="Self-training", subcategory="{model}"),
        figure=report(f"{SELFTRAIN_DIR}/{{model}}/report.png", caption="../report/selftrain.rst",
                      category="Self-training", subcategory="{model}"),
    params:
        out_dir=lambda wildcards, output: Path(output.table).parent,
        soundscapes=lambda wildcards, input: " ".join(["--soundscapes", *map(shlex.quote, input.soundscapes)])
                                             if input.soundscapes else "",
    log:
        f"logs/selftrain/{{model}}/report.log",
    wildcard_constraints:
        model="|".join(MODEL_NAMES),
    conda:
        "../../envs/tensorflow.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m jibjib selftrain-report --model={wildcards.model} --metrics {input.metrics:q}"
        " --pseudo-labels {input.pseudo:q} {params.soundscapes} --out-dir={params.out_dir:q} 2> {log:q}"
