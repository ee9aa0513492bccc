"""The training recipe, measured: both models on the demo set with the defaults and without background and augmentation.

Runs the whole workflow twice, each in a work folder of its own (features are
computed once per folder): `recipe` with the configuration `make demo` uses
(config.yaml + resources/demo.yaml: background folder, augmentation, cosine
schedule), and `baseline` with the same settings but
`train.use_background: false`, `train.augment.enabled: false` and a constant
learning rate (what jibjib trained before). Then prints, per model and
recipe, the focal test split (file top-1, file macro-F1) and the annotated
demo soundscapes (cmAP, ROC-AUC, event recall and false detections per hour
of all audio, pooled over species, as analyze delivers its detections), and
the targets of the robust-training issue.

    .venv/bin/python benchmarks/recipe.py [--workdir DIR] [--cores 2] [--only recipe|baseline]

About 30 minutes on a 2-core machine. A finished run is reused by Snakemake
(only stale steps rerun), so a second call just prints the table.
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
BASELINE = {"train": {"use_background": False, "augment": {"enabled": False}, "lr_schedule": "constant"}}
RECIPES = {"recipe": {}, "baseline": BASELINE}
MODELS = ("vggish", "convlstm")


def run_workflow(workdir: Path, overrides: dict, cores: int) -> float:
    """Snakemake on the demo data in `workdir` (a copy of nothing: it reads the checkout's demo folders)."""
    workdir.mkdir(parents=True, exist_ok=True)
    extra = workdir / "recipe.yaml"
    extra.write_text(json.dumps({"data_dir": str(REPO / "resources" / "demo_birds"),
                                 "analyze": {"input_dir": None},
                                 "soundscapes": {"audio_dir": str(REPO / "resources" / "demo_soundscapes")},
                                 **overrides}))
    started = time.monotonic()
    command = [str(Path(sys.executable).with_name("snakemake")), "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(workdir), "--cores", str(cores), "--configfile", str(REPO / "config.yaml"),
               str(REPO / "resources" / "demo.yaml"), str(extra)]
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def figures(workdir: Path, model: str) -> dict[str, float]:
    metrics = json.loads((workdir / "results" / "eval" / model / "metrics.json").read_text())
    scapes = json.loads((workdir / "results" / "eval" / model / "soundscapes.json").read_text())
    return {
        "focal_top1": metrics["file"]["top1_accuracy"],
        "focal_f1": metrics["file"]["macro"]["f1"],
        "cmap": scapes["cmap"],
        "auc": scapes["macro_roc_auc"],
        # Pooled over every call and every detection, as analyze delivers them (docs/evaluation.md).
        "recall": scapes["pooled"]["event_recall"],
        "fd_per_hour": scapes["pooled"]["false_detections_per_hour"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "jibjib-recipe")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--only", choices=sorted(RECIPES))
    args = parser.parse_args()
    subprocess.run([str(Path(sys.executable).with_name("jibjib")), "make-demo", str(REPO / "resources" / "demo_birds"),
                    "--soundscapes", str(REPO / "resources" / "demo_soundscapes")], check=True, cwd=REPO)
    results: dict[tuple[str, str], dict[str, float]] = {}
    for name, overrides in RECIPES.items():
        if args.only and name != args.only:
            continue
        seconds = run_workflow(args.workdir / name, overrides, args.cores)
        print(f"{name}: workflow {seconds / 60:.1f} min in {args.workdir / name}", file=sys.stderr)
        for model in MODELS:
            results[(model, name)] = figures(args.workdir / name, model)

    print("| model | recipe | focal top-1 | focal macro-F1 | soundscape cmAP | ROC-AUC | event recall | "
          "false detections / h |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (model, name), f in results.items():
        print(f"| {model} | {name} | {f['focal_top1']:.3f} | {f['focal_f1']:.3f} | {f['cmap']:.3f} | {f['auc']:.3f} | "
              f"{f['recall']:.3f} | {f['fd_per_hour']:.1f} |")
    for model in MODELS:
        recipe, baseline = results.get((model, "recipe")), results.get((model, "baseline"))
        if recipe is None:
            continue
        checks = [f"cmAP {recipe['cmap']:.2f} (>= 0.8)", f"event recall {recipe['recall']:.2f} (>= 0.8)",
                  f"{recipe['fd_per_hour']:.0f} false detections/h (<= 30)",
                  f"focal macro-F1 {recipe['focal_f1']:.2f} (>= 0.9)"]
        if baseline is not None and baseline["fd_per_hour"] > 0:
            checks.append(f"false detections/h x{recipe['fd_per_hour'] / baseline['fd_per_hour']:.2f} "
                          f"of the baseline (<= 0.5)")
        print(f"{model}: " + ", ".join(checks))


if __name__ == "__main__":
    main()
