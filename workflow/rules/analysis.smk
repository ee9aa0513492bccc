# analysis: exported models -> detections in long field recordings (results/analysis/<model>/),
# and each model's evaluation on annotated soundscapes (the second half of this file).
#
# Detections:
# Only with analyze.input_dir. The recordings are sharded by a hash of their
# path (analyze.shards) and each shard's input is its content signature
# (results/analysis/sources/<shard>.tsv), rewritten only when a file was
# added, removed or changed content, as in the feature stage. A shard job
# analyses its files one at a time and, as each file is done, keeps its window
# scores (results/analysis/<model>/scores/, npz), writes its table and appends
# its detections to the shard's detections file; it analyses again only the
# files whose content, export, engine or window hop changed, and a killed job
# resumes with the files it had not finished. The tables job then merges the
# shards' detections and files tables, holding no scores.
#
# Where the jobs run follows analyze.engine: `savedmodel` jobs carry gpu=1
# (rule analyze_shard, the GPU partition on SLURM); `tflite` jobs run LiteRT
# on the CPU and ask for no GPU (rule analyze_shard_cpu, the CPU partition),
# so a CPU-only workstation runs several at once.

import os

from jibjib.analysis.combined import combined_names
from jibjib.features.inventory import refresh_signatures, shard_species

ANALYSIS_DIR = Path(SETTINGS.analyze.input_dir or ".")
ANALYSIS_SOURCES = Path("results/analysis/sources")
ANALYSIS_SHARDS = shard_species(list(RECORDINGS), SETTINGS.analyze.shards)
ANALYSIS_MODELS = SETTINGS.analysis_models

if ANALYSIS_MODELS and workflow.is_main_process:
    # The hashes a shard job took are read back from the first model's manifests.
    _analysis_sources = refresh_signatures(ANALYSIS_DIR, RECORDINGS, ANALYSIS_SOURCES,
                                           Path(f"results/analysis/{ANALYSIS_MODELS[0]}/shards"),
                                           SETTINGS.analyze.shards, workers=min(8, os.cpu_count() or 1),
                                           manifest_path_column="file")
    if _analysis_sources.summary():
        print(f"analysis sources: {_analysis_sources.summary()}; {len(_analysis_sources.changed_shards)} of "
              f"{len(ANALYSIS_SHARDS)} shards changed", file=sys.stderr)


rule:
    name:
        analysis_rule_name("analyze_shard")
    input:
        sources=ANALYSIS_SOURCES / "{shard}.tsv",
        export=lambda wildcards: current_export(wildcards.model),
    output:
        manifest="results/analysis/{model}/shards/{shard}.tsv",
        detections="results/analysis/{model}/shards/{shard}.detections.tsv",
    params:
        root=ANALYSIS_DIR,
        scores="results/analysis/{model}/scores",
        out_dir="results/analysis/{model}",
        options=f"{engine_option()} {hop_option()} {table_options()} {field_options()}",
        # The lists' content, not their times: editing a list rewrites the tables (the scores are reused).
        species_lists=content_digest(SETTINGS.analyze.species_lists),
    log:
        job="logs/analysis/{model}/{shard}.log",
        tensorflow="logs/analysis/{model}/{shard}.tensorflow.log",
    wildcard_constraints:
        model="|".join(MODEL_NAMES),
    conda:
        "../../envs/tensorflow.yaml"
    threads: ANALYSIS_THREADS
    resources:
        **analysis_resources(runtime=4 * 60),
    shell:
        "JIBJIB_TF_LOG={log.tensorflow:q} python -m jibjib analyze --model={input.export:q} --root={params.root:q}"
        " --sources={input.sources:q} --scores={params.scores:q} --out={params.out_dir:q}"
        " --manifest={output.manifest:q} --detections={output.detections:q} {params.options}"
        " --threads={threads} 2> {log.job:q}"


rule analysis_tables:
    input:
        manifests=expand("results/analysis/{{model}}/shards/{shard}.tsv", shard=ANALYSIS_SHARDS),
        detections=expand("results/analysis/{{model}}/shards/{shard}.detections.tsv", shard=ANALYSIS_SHARDS),
    output:
        detections=report("results/analysis/{model}/detections.tsv", caption="../report/detections.rst",
                          category="Analysis", subcategory="{model}"),
        files="results/analysis/{model}/files.tsv",
        activity="results/analysis/{model}/activity.tsv",
        activity_figure=report("results/analysis/{model}/activity.png", caption="../report/activity.rst",
                               category="Analysis", subcategory="{model}"),
        combined=[f"results/analysis/{{model}}/{name}" for name in combined_names(SETTINGS.analyze.format)],
    params:
        scores="results/analysis/{model}/scores",
        out_dir=lambda wildcards, output: Path(output.files).parent,
        options=f"{format_options()} --mel-range {SETTINGS.frontend.fmin_hz} {SETTINGS.frontend.fmax_hz}",
    log:
        "logs/analysis/{model}/tables.log",
    wildcard_constraints:
        model="|".join(MODEL_NAMES),
    conda:
        "../../envs/tensorflow.yaml"
    threads: 1
    resources:
        # Streams the shards' detection files; holds one row per recording (files.tsv), no scores.
        mem_mb=2000,
        runtime=60,
    shell:
        "python -m jibjib analysis-tables --manifests {input.manifests:q} --detections {input.detections:q}"
        " --out={params.out_dir:q} --scores={params.scores:q} --remove-other-scores {params.options} 2> {log:q}"


# Review: a page per model to verify its detections in a browser (results/analysis/<model>/review/index.html),
# on by default (analyze.review): per species the best detections and a seeded random sample across its score
# range, each with a clip and a spectrogram. Bounded: at most species x (top + score_bins x per_bin) clips.


rule review:
    input:
        detections="results/analysis/{model}/detections.tsv",
        files="results/analysis/{model}/files.tsv",
    output:
        page="results/analysis/{model}/review/index.html",
    params:
        analysis=lambda wildcards, input: Path(input.detections).parent,
        out_dir=lambda wildcards, output: Path(output.page).parent,
        options=review_options(),
    log:
        "logs/analysis/{model}/review.log",
    wildcard_constraints:
        model="|".join(MODEL_NAMES),
    conda:
        "../../envs/tensorflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    shell:
        "python -m jibjib review --analysis={params.analysis:q} --out={params.out_dir:q} {params.options}"
        " 2> {log:q}"


# Verification: with analyze.verifications (the review page's verifications.csv), each species' verified
# precision and the threshold reaching analyze.target_precision (results/analysis/<model>/verification/).
# The file is a parameter by its content, so touching it reruns nothing and editing it reruns the rule.

if SETTINGS.analyze.verifications:

    rule verify:
        input:
            detections="results/analysis/{model}/detections.tsv",
        output:
            table="results/analysis/{model}/verification/verification.tsv",
        params:
            verifications=lambda wildcards: verifications_file(wildcards.model),
            content=lambda wildcards: content_digest(verifications_file(wildcards.model)),
            analysis=lambda wildcards, input: Path(input.detections).parent,
            out_dir=lambda wildcards, output: Path(output.table).parent,
            target=SETTINGS.analyze.target_precision,
        log:
            "logs/analysis/{model}/verify.log",
        wildcard_constraints:
            model="|".join(MODEL_NAMES),
        conda:
            "../../envs/tensorflow.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        shell:
            "python -m jibjib verify --verifications={params.verifications:q} --analysis={params.analysis:q}"
            " --out={params.out_dir:q} --target-precision={params.target} 2> {log:q}"


# Soundscapes: exported model -> its evaluation on annotated soundscapes (results/eval/<model>/soundscapes.*).
# Only with soundscapes.audio_dir. The soundscapes are analysed as `jibjib analyze`
# delivers by default: at analyze.hop_seconds, with analyze.merge and
# analyze.min_score (results/eval/<model>/soundscapes/: tables, and window
# scores that are reused while file, export and hop stay the same), then
# scored against the annotations. The rules depend on content signatures of
# the audio and the annotation tables (results/soundscapes/sources/, rewritten
# only when a file's content changed: jibjib.analysis.sources), so a checkout
# that touches the recordings reruns nothing. report.md then holds the
# test-split report followed by the soundscape section.

from jibjib.analysis.sources import ANNOTATIONS_NAME, refresh_soundscape_sources

SOUNDSCAPE_DIR = SETTINGS.soundscapes.audio_dir
SOUNDSCAPE_ANNOTATIONS = SETTINGS.soundscapes.annotations or SOUNDSCAPE_DIR
SOUNDSCAPE_SOURCES = Path("results/soundscapes/sources")

if SOUNDSCAPE_DIR and workflow.is_main_process:
    # The hashes the analysis took are read back from the first model's files.tsv.
    _soundscape_sources = refresh_soundscape_sources(
        Path(SOUNDSCAPE_DIR), Path(SOUNDSCAPE_ANNOTATIONS), SOUNDSCAPE_SOURCES,
        Path(f"results/eval/{SETTINGS.models[0]}/soundscapes/files.tsv"))
    if _soundscape_sources.summary():
        print(f"soundscape sources: {_soundscape_sources.summary()}", file=sys.stderr)


# The two jobs' commands, shared with the students of self-training (selftraining.smk).
# analyze: a file that could not be analysed gives exit status 1 after files.tsv (its reason) is
# written; any other failure leaves no files.tsv (Snakemake removed the old one).
SOUNDSCAPE_SCORES_SHELL = (
    "JIBJIB_TF_LOG={log.tensorflow:q} python -m jibjib analyze --model={input.export:q} {params.engine}"
    " --root={params.audio_dir:q} --sources={input.sources:q} --out={params.out_dir:q}"
    " --scores={params.scores:q} --remove-other-scores {params.hop} {params.options}"
    " --threads={threads} 2> {log.job:q} || test -e {output.files:q}")
EVALUATE_SOUNDSCAPES_SHELL = (
    "python -m jibjib evaluate-soundscapes --scores={params.scores:q} --annotations={params.annotations:q}"
    " --thresholds={input.thresholds:q} --audio={params.audio_dir:q} --figure=soundscape.png"
    " --out-dir={params.out_dir:q} --model={params.model:q} --with-report={input.test_report:q}"
    " {params.options} 2> {log:q}")

if SOUNDSCAPE_DIR:

    for _model in SETTINGS.models:

        rule:
            name:
                analysis_rule_name(f"soundscape_scores_{_model}")
            input:
                export=current_export(_model),
                sources=SOUNDSCAPE_SOURCES / "shard-00.tsv",
            output:
                files=f"results/eval/{_model}/soundscapes/files.tsv",
                detections=f"results/eval/{_model}/soundscapes/detections.tsv",
            params:
                audio_dir=SOUNDSCAPE_DIR,
                out_dir=lambda wildcards, output: Path(output.files).parent,
                scores=lambda wildcards, output: Path(output.files).parent / "scores",
                hop=hop_option(),
                options=table_options(),
                engine=engine_option(),
            log:
                job=f"logs/soundscapes/{_model}.analyze.log",
                tensorflow=f"logs/soundscapes/{_model}.analyze.tensorflow.log",
            conda:
                "../../envs/tensorflow.yaml"
            threads: ANALYSIS_THREADS
            resources:
                **analysis_resources(runtime=60),
            shell:
                SOUNDSCAPE_SCORES_SHELL

        rule:
            name:
                f"evaluate_soundscapes_{_model}"
            input:
                files=f"results/eval/{_model}/soundscapes/files.tsv",
                thresholds=f"results/eval/{_model}/thresholds.tsv",
                test_report=f"results/eval/{_model}/test_report.md",
                annotations=SOUNDSCAPE_SOURCES / ANNOTATIONS_NAME,
            output:
                summary=report(f"results/eval/{_model}/soundscapes.json", caption="../report/soundscapes.rst",
                               **report_place(_model)),
                section=f"results/eval/{_model}/soundscapes.md",
                report=report(f"results/eval/{_model}/report.md", caption="../report/summary.rst",
                              **report_place(_model)),
                figure=report(f"results/eval/{_model}/soundscape.png", caption="../report/soundscapes.rst",
                              **report_place(_model)),
            params:
                scores=lambda wildcards, input: Path(input.files).parent / "scores",
                annotations=SOUNDSCAPE_ANNOTATIONS,
                audio_dir=SOUNDSCAPE_DIR,
                out_dir=lambda wildcards, output: Path(output.summary).parent,
                model=_model,
                options=detection_options(),
            log:
                f"logs/soundscapes/{_model}.log",
            conda:
                "../../envs/tensorflow.yaml"
            threads: 1
            resources:
                mem_mb=4000,
                runtime=30,
            shell:
                EVALUATE_SOUNDSCAPES_SHELL
