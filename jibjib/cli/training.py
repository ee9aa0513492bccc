"""`jibjib train`: one model trained on the features."""

from __future__ import annotations

import argparse
import os
import sys

from jibjib.cli.common import add_dataset_inputs, tensorflow_threads
from jibjib.core.errors import InputError
from jibjib.core.settings import RunSettings, schema_default


def cmd_train(args: argparse.Namespace) -> None:
    tensorflow_threads(args.threads)
    settings = RunSettings.from_json(args.settings)  # before TensorFlow loads: a typo costs no wait
    if settings.model != args.model:
        raise InputError(f"--settings: the settings of {settings.model}, not of --model {args.model}")
    from jibjib.training.report import WorkerReport
    from jibjib.training.run import train

    report = train(settings, args.split, args.labels, args.features_dir, args.out_dir, args.packed, args.embeddings,
                   args.pseudo_labels, args.pseudo_share)
    if isinstance(report, WorkerReport):  # another worker than the chief of a multi-worker run: the chief reports
        print(f"train {args.model}: worker {report.worker} done", file=sys.stderr)
    elif report.reused:
        print(f"train {args.model}: reused the finished run of {report.epochs_completed} epochs", file=sys.stderr)
    else:
        print(f"train {args.model}: {report.epochs_completed} epochs in {report.seconds} s", file=sys.stderr)
    if not isinstance(report, WorkerReport) and report.devices["workers"] == 1 and report.devices["replicas"] > 1:
        # Everything is written. Tearing down MirroredStrategy's input pipelines can wait up to a minute per
        # iterator in TensorFlow 2.21 (a tf.data autotuning thread that misses its cancellation, it seems):
        # seen on 4 logical CPUs as a process ending minutes after its last file. A single process ends now
        # (the workers of a multi-worker run leave through their coordination service's shutdown).
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(0)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on the features")
    p.add_argument("--model", required=True, choices=["vggish", "convlstm"])
    add_dataset_inputs(p)
    p.add_argument("--out-dir", required=True, help="model.keras, history.tsv, train.json and checkpoints/ go here")
    p.add_argument("--settings", required=True, help="the run's settings as JSON: {\"model\": ..., \"train\": {...}, \"<model>\": {...}}; "
                        "keys left out take the schema's defaults (docs/configuration.md)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for TensorFlow (0: all)")
    p.add_argument("--packed", nargs="+", metavar="INDEX_TSV",
                   help="read examples from these packed shards (jibjib pack) instead of each file's npz")
    p.add_argument("--embeddings", nargs="+", metavar="INDEX_TSV",
                   help="VGGish with a frozen trunk: train the layers after the cut from these embedding caches "
                        "(jibjib embed)")
    p.add_argument("--pseudo-labels", metavar="NPZ",
                   help="self-training: also train on these pseudo-labelled windows (jibjib pseudo-label)")
    p.add_argument("--pseudo-share", type=float, default=schema_default("self_training.batch_share"),
                   help="pseudo-labelled windows added to each batch, as a share of the batch size")
    p.set_defaults(func=cmd_train)
