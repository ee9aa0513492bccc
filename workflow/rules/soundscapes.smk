# Stage 5b: exported model -> its evaluation on annotated soundscapes (results/eval/<model>/soundscapes.*).
# Only with soundscapes.audio_dir. The soundscapes are analysed window by
# window as `jibjib analyze` does (results/eval/<model>/soundscapes/: tables,
# and window scores that are reused while file, export and hop stay the same),
# then scored against the annotations. report.md then holds the test-split
# report followed by the soundscape section.

SOUNDSCAPE_DIR = SETTINGS.soundscapes.audio_dir
SOUNDSCAPE_ANNOTATIONS = SETTINGS.soundscapes.annotations or SOUNDSCAPE_DIR


if SOUNDSCAPE_DIR:

    for _model in SETTINGS.models:

        rule:
            name:
                f"soundscape_scores_{_model}"
            input:
                export=export_dir(_model),
                audio=soundscape_audio(SOUNDSCAPE_DIR),
            output:
                files=f"results/eval/{_model}/soundscapes/files.tsv",
                detections=f"results/eval/{_model}/soundscapes/detections.tsv",
            params:
                audio_dir=SOUNDSCAPE_DIR,
                out_dir=f"results/eval/{_model}/soundscapes",
                scores=f"results/eval/{_model}/soundscapes/scores",
            log:
                job=f"logs/soundscapes/{_model}.analyze.log",
                tensorflow=f"logs/soundscapes/{_model}.analyze.tensorflow.log",
            conda:
                "../../envs/tensorflow.yaml"
            threads: 2
            resources:
                gpu=1,
                mem_mb=4000,
                runtime=60,
            shell:
                # A file that could not be analysed gives exit status 1 after files.tsv (its reason) is
                # written; any other failure leaves no files.tsv (Snakemake removed the old one).
                "JIBJIB_TF_LOG={log.tensorflow:q} python -m jibjib analyze --model={input.export:q}"
                " --out={params.out_dir:q} --scores={params.scores:q} --remove-other-scores --merge"
                " --threads={threads} {params.audio_dir:q} 2> {log.job:q} || test -e {output.files:q}"

        rule:
            name:
                f"evaluate_soundscapes_{_model}"
            input:
                files=f"results/eval/{_model}/soundscapes/files.tsv",
                thresholds=f"results/eval/{_model}/thresholds.tsv",
                test_report=f"results/eval/{_model}/test_report.md",
                annotations=SOUNDSCAPE_ANNOTATIONS,
            output:
                summary=report(f"results/eval/{_model}/soundscapes.json", caption="../report/soundscapes.rst",
                               **report_place(_model)),
                section=f"results/eval/{_model}/soundscapes.md",
                report=report(f"results/eval/{_model}/report.md", caption="../report/summary.rst",
                              **report_place(_model)),
                figure=report(f"results/eval/{_model}/soundscape.png", caption="../report/soundscapes.rst",
                              **report_place(_model)),
            params:
                scores=f"results/eval/{_model}/soundscapes/scores",
                audio_dir=SOUNDSCAPE_DIR,
                out_dir=f"results/eval/{_model}",
                model=_model,
            log:
                f"logs/soundscapes/{_model}.log",
            threads: 1
            resources:
                mem_mb=4000,
                runtime=30,
            shell:
                "python -m jibjib evaluate-soundscapes --scores={params.scores:q} --annotations={input.annotations:q}"
                " --thresholds={input.thresholds:q} --audio={params.audio_dir:q} --figure=soundscape.png"
                " --out-dir={params.out_dir:q} --model={params.model:q} --with-report={input.test_report:q}"
                " 2> {log:q}"
