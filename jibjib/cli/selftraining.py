"""Self-training on unlabelled field audio: `unlabelled-features`, `window-scores`, `pseudo-label` and
`selftrain-report` (the student trains with `jibjib train --pseudo-labels`, and is evaluated by
`jibjib evaluate`)."""

from __future__ import annotations

import argparse
import sys

from jibjib.cli.common import frontend_option, input_dir, parse_json, tensorflow_threads


def cmd_unlabelled_features(args: argparse.Namespace) -> None:
    from jibjib.selftraining.unlabelled import update_unlabelled

    table = update_unlabelled(args.audio_dir, args.features_dir, args.manifest, frontend_option(args.frontend))
    rejected = int((table["status"] == "rejected").sum())
    print(f"unlabelled-features: {len(table)} recordings, {table.attrs['computed']} computed, the rest reused"
          + (f", {rejected} rejected (see {args.manifest})" if rejected else ""), file=sys.stderr)


def cmd_window_scores(args: argparse.Namespace) -> None:
    tensorflow_threads(args.threads)
    import numpy as np
    import pandas as pd

    from jibjib.core import fsutil
    from jibjib.models.loading import load_for_inference
    from jibjib.evaluation.evaluate import model_seq_len
    from jibjib.selftraining.pseudo import teacher_settings, window_grid, window_scores

    multi_label = teacher_settings(args.model_dir).net.multi_label
    model = load_for_inference(f"{args.model_dir}/model.keras")
    seq_len = model_seq_len(model)
    grid = window_grid(seq_len, frontend_option(args.frontend), args.hop)
    manifest = pd.read_csv(args.manifest, sep="\t", keep_default_na=False)
    scores = window_scores(model, manifest, grid, multi_label)
    fsutil.save_npz(args.out, **scores, seq_len=np.int64(seq_len or 0), multi_label=np.bool_(multi_label),
                    window_frames=np.int64(grid.window_frames), hop_frames=np.int64(grid.hop_frames))
    print(f"window-scores: {len(scores['file'])} windows of {len(manifest)} recordings", file=sys.stderr)


def cmd_pseudo_label(args: argparse.Namespace) -> None:
    import dataclasses

    import numpy as np
    import pandas as pd

    from jibjib.core.params import WindowGrid
    from jibjib.core.settings import SelfTrainingSettings
    from jibjib.selftraining.pseudo import write_pseudo_labels

    settings = SelfTrainingSettings.from_dict(parse_json("--settings", args.settings) if args.settings else None)
    params = frontend_option(args.frontend)
    thresholds = pd.read_csv(args.thresholds, sep="\t", keep_default_na=False, na_values=[""])
    with np.load(args.scores, allow_pickle=False) as z:
        windows = {key: z[key] for key in ("file", "start_frame", "probabilities")}
        seq_len, multi_label = int(z["seq_len"]) or None, bool(z["multi_label"])
        grid = dataclasses.replace(WindowGrid.for_model(params, seq_len or 1), window_frames=int(z["window_frames"]),
                                   hop_frames=int(z["hop_frames"]))
    manifest = pd.read_csv(args.manifest, sep="\t", keep_default_na=False)
    rows = write_pseudo_labels(args.out, args.table, windows, manifest, thresholds["label"].astype(str).tolist(),
                               thresholds["window_threshold"].to_numpy(float), settings, seq_len, grid, multi_label,
                               params.mel_bands)
    kinds = rows["kind"].value_counts()
    print(f"pseudo-label: {kinds.get('positive', 0)} positive and {kinds.get('negative', 0)} negative windows of "
          f"{len(windows['file'])}", file=sys.stderr)


def cmd_selftrain_report(args: argparse.Namespace) -> None:
    from jibjib.selftraining.report import write_report

    table = write_report(args.model, args.metrics, args.pseudo_labels or [], args.out_dir, args.soundscapes)
    print(f"selftrain-report {args.model}: teacher and {len(table) - 1} student round(s) in {args.out_dir}/report.md",
          file=sys.stderr)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("unlabelled-features", help="features of the unlabelled recordings of self-training")
    p.add_argument("--audio-dir", required=True, type=input_dir, help="self_training.audio_dir")
    p.add_argument("--features-dir", required=True, help="one npz per recording (<relative path>.npz)")
    p.add_argument("--manifest", required=True, help="one row per recording (docs/outputs.md)")
    p.add_argument("--frontend", help="front-end parameters as JSON (default: VGGish)")
    p.set_defaults(func=cmd_unlabelled_features)

    p = sub.add_parser("window-scores", help="a teacher's probabilities for every window of the unlabelled audio")
    p.add_argument("--model-dir", required=True, type=input_dir, help="the teacher: model.keras and train.json")
    p.add_argument("--manifest", required=True, help="unlabelled-features' manifest")
    p.add_argument("--out", required=True, help="scores.npz")
    p.add_argument("--frontend", help="front-end parameters as JSON (default: VGGish)")
    p.add_argument("--hop", type=float, metavar="SECONDS", help="between windows (default: a whole window)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for TensorFlow (0: all)")
    p.set_defaults(func=cmd_window_scores)

    p = sub.add_parser("pseudo-label", help="pseudo-labelled windows from a teacher's window scores")
    p.add_argument("--scores", required=True, help="window-scores' npz")
    p.add_argument("--manifest", required=True, help="unlabelled-features' manifest")
    p.add_argument("--thresholds", required=True, help="the teacher's thresholds.tsv (its window_threshold)")
    p.add_argument("--settings", help="the self_training section as JSON (keys left out: the schema's defaults)")
    p.add_argument("--frontend", help="front-end parameters as JSON (default: VGGish)")
    p.add_argument("--out", required=True, help="pseudo_labels.npz, for jibjib train --pseudo-labels")
    p.add_argument("--table", required=True, help="pseudo_labels.tsv, one row per window")
    p.set_defaults(func=cmd_pseudo_label)

    p = sub.add_parser("selftrain-report", help="teacher and students of self-training side by side")
    p.add_argument("--model", required=True)
    p.add_argument("--metrics", nargs="+", required=True, help="metrics.json of the teacher, then of each round")
    p.add_argument("--pseudo-labels", nargs="*", help="pseudo_labels.tsv of each round")
    p.add_argument("--soundscapes", nargs="+", help="soundscapes.json of the teacher, then of each round")
    p.add_argument("--out-dir", required=True, help="report.tsv, report.md and report.png go here")
    p.set_defaults(func=cmd_selftrain_report)
