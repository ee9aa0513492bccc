"""The training recipe, measured: the demo's default recipe beside the same with each new ingredient off in turn.

Runs the workflow once per configuration, each in a work folder of its own
(features are computed once per folder), on the demo set:

- `recipe`: what `make demo` runs (config.yaml + resources/demo.yaml: call
  windows, union mixing, background, augmentation, one self-training round of
  the ConvLSTM on resources/demo_field). Its ConvLSTM row is the last round's
  student; `no self-training` is the same run's teacher (the model before any
  round), so self-training costs no run of its own.
- `no call windows`: every window takes its file's label (`train.call_windows: all`).
- `no union mix`: `train.augment.union_mix_probability: 0`.
- `baseline`: jibjib before the robust-training and this recipe's issues: weak
  labels, no union mix, no background files, no augmentation, a constant rate.

The ablation runs train without self-training (so each compares with the
recipe's teacher) and, by default, the ConvLSTM only (`--ablation-models`),
which keeps the whole benchmark within an hour on a 2-core machine. Printed per
model and configuration: the focal test split's file macro-F1 and, on the
annotated demo soundscapes as analyze delivers its detections, window cmAP,
macro ROC-AUC, pooled event recall and false detections per hour of all audio,
and where the false detections fall (beside a call of their own species, on
other species' calls only, on no call; docs/evaluation.md); then the targets of
the recipe issue.

    .venv/bin/python benchmarks/recipe.py [--workdir DIR] [--cores 2] [--only NAME ...]
        [--ablation-models vggish convlstm]

A finished run is reused by Snakemake (only stale steps rerun), so a second call just prints the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NO_SELF_TRAINING = {"self_training": {"audio_dir": None}}
RECIPES = {
    "recipe": {},
    "no call windows": {"train": {"call_windows": "all"}, **NO_SELF_TRAINING},
    "no union mix": {"train": {"augment": {"union_mix_probability": 0.0}}, **NO_SELF_TRAINING},
    "baseline": {"train": {"call_windows": "all", "use_background": False, "lr_schedule": "constant",
                           "augment": {"enabled": False, "union_mix_probability": 0.0}}, **NO_SELF_TRAINING},
}
MODELS = ("vggish", "convlstm")
TARGETS = {"convlstm": {"cmap": 0.9, "recall": 0.9, "fd_per_hour": 20.0, "focal_f1": 0.95},
           "vggish": {"cmap": 0.6, "fd_per_hour": 100.0, "focal_f1": 0.95}}


def run_workflow(workdir: Path, overrides: dict, cores: int) -> float:
    """Snakemake on the demo data in `workdir` (it reads the checkout's demo folders)."""
    workdir.mkdir(parents=True, exist_ok=True)
    extra = workdir / "recipe.yaml"
    demo = REPO / "resources"
    config = {"data_dir": str(demo / "demo_birds"), "analyze": {"input_dir": None},
              "soundscapes": {"audio_dir": str(demo / "demo_soundscapes")},
              "self_training": {"audio_dir": str(demo / "demo_field")}}
    for section, values in overrides.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    extra.write_text(json.dumps(config))
    started = time.monotonic()
    command = [str(Path(sys.executable).with_name("snakemake")), "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(workdir), "--cores", str(cores), "--configfile", str(REPO / "config.yaml"),
               str(demo / "demo.yaml"), str(extra)]
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def figures(eval_dir: Path) -> dict[str, float]:
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    scapes = json.loads((eval_dir / "soundscapes.json").read_text())
    return {
        "focal_f1": metrics["file"]["macro"]["f1"],
        "cmap": scapes["cmap"],
        "auc": scapes["macro_roc_auc"],
        # Pooled over every call and every detection, as analyze delivers them (docs/evaluation.md).
        "recall": scapes["pooled"]["event_recall"],
        "fd_per_hour": scapes["pooled"]["false_detections_per_hour"],
        # Where the false detections fall (docs/evaluation.md): counts, not rates.
        "beside": scapes["pooled"]["false_detections_partial_call"],
        "other": scapes["pooled"]["false_detections_other_calls"],
        "no_call": scapes["pooled"]["false_detections_unannotated"],
    }


def last_student(results: Path, model: str) -> Path | None:
    """The eval folder of the model's last self-training round, or None if it did not self-train."""
    rounds = sorted((results / "selftrain" / model).glob("round-*/eval/soundscapes.json"),
                    key=lambda path: int(path.parts[-3].split("-")[1]))
    return rounds[-1].parent if rounds else None


def collect(workdir: Path, name: str, models: tuple[str, ...]) -> dict[tuple[str, str], dict[str, float]]:
    results = workdir / "results"
    rows = {}
    for model in models:
        teacher = figures(results / "eval" / model)
        student = last_student(results, model) if name == "recipe" else None
        rows[(model, name)] = figures(student) if student else teacher
        if student:
            rows[(model, "no self-training")] = teacher
    return rows


def print_table(rows: dict[tuple[str, str], dict[str, float]]) -> None:
    print("| model | configuration | focal macro-F1 | soundscape cmAP | ROC-AUC | event recall, pooled | "
          "false detections / h, pooled | beside own call | other species' calls | no call |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    order = ["recipe", "no self-training", *list(RECIPES)[1:]]
    for model in MODELS:
        for name in order:
            f = rows.get((model, name))
            if f:
                print(f"| {model} | {name} | {f['focal_f1']:.3f} | {f['cmap']:.3f} | {f['auc']:.3f} | "
                      f"{f['recall']:.3f} | {f['fd_per_hour']:.1f} | {f['beside']} | {f['other']} | {f['no_call']} |")
    for model, targets in TARGETS.items():
        f = rows.get((model, "recipe"))
        if f:
            checks = [f"{key} {f[key]:.3g} ({'<=' if key == 'fd_per_hour' else '>='} {goal:g}: "
                      f"{'met' if (f[key] <= goal if key == 'fd_per_hour' else f[key] >= goal) else 'missed'})"
                      for key, goal in targets.items()]
            print(f"{model} recipe: " + ", ".join(checks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "jibjib-recipe")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=sorted(RECIPES))
    parser.add_argument("--ablation-models", nargs="+", choices=MODELS, default=["convlstm"])
    args = parser.parse_args()
    demo = REPO / "resources"
    subprocess.run([str(Path(sys.executable).with_name("jibjib")), "make-demo", str(demo / "demo_birds"),
                    "--soundscapes", str(demo / "demo_soundscapes"), "--field", str(demo / "demo_field")],
                   check=True, cwd=REPO)
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for name, overrides in RECIPES.items():
        if args.only and name not in args.only:
            continue
        models = MODELS if name == "recipe" else tuple(args.ablation_models)
        workdir = args.workdir / name.replace(" ", "-")
        seconds = run_workflow(workdir, {**overrides, "models": list(models)}, args.cores)
        print(f"{name}: workflow {seconds / 60:.1f} min in {workdir}", file=sys.stderr, flush=True)
        rows.update(collect(workdir, name, models))
    print_table(rows)


if __name__ == "__main__":
    main()
