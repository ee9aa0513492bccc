"""TFLite variants against their SavedModel: size, top-1 agreement, file macro-F1, latency per window.

Trains nothing. For each model it reads `<export>/<model>/<version>/` (from
`make demo`); if that export has no TFLite files (export.tflite was false), it
exports the trained model again with them (`jibjib export --tflite`, from
results/models and results/eval) into --workdir, leaving results/ alone.

On the test split of split.tsv (files read and resampled to 16 kHz as
`jibjib predict` does, cut into whole windows of the model's unit on the patch
grid; a file shorter than one window is zero-padded to one), every window goes
through the SavedModel's `windows` signature (the reference) and through each
TFLite file with LiteRT (ai-edge-litert, --threads threads). Per variant:
  size          the file (SavedModel: saved_model.pb + variables/)
  agreement     share of windows whose top class is the SavedModel's, over the windows of files with
                a species (on a background file's windows every score is near zero with sigmoid
                outputs, and which of them is highest means nothing); their count is `windows`
  max |d|       largest score difference to the SavedModel over all windows
  file macro F1 top class of the mean window score per file, against the label
  latency       median of one invoke (one window) after a warm-up, in ms
With --pykanto it also reports max |d| of model.tflite on pykanto's real
recordings (pip install --no-deps pykanto==0.1.8; `make setup` does).

    .venv/bin/python benchmarks/tflite.py [--results results] [--data-dir resources/demo_birds]
        [--models vggish convlstm] [--version 1] [--threads 2] [--workdir results/bench/tflite] [--pykanto]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jibjib.labels.tables import target_matrix  # noqa: E402
from jibjib.serving.exported import ExportAssets  # noqa: E402
from jibjib.evaluation.metrics import classification_metrics  # noqa: E402
from jibjib.serving.predict import read_waveform  # noqa: E402
from jibjib.serving.tflite import VARIANTS, cut_windows, litert_scores, saved_model_scores  # noqa: E402


def export_with_tflite(results: Path, model: str, workdir: Path, version: int) -> Path:
    out = workdir / model / str(version)
    if (out / "model.tflite").is_file():
        return out
    command = [sys.executable, "-m", "jibjib", "export", "--model-dir", str(results / "models" / model),
               "--eval-dir", str(results / "eval" / model), "--labels", str(results / "labels.tsv"),
               "--split", str(results / "split.tsv"), "--out", str(out), "--tflite"]
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return out


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in [folder / "saved_model.pb", *(folder / "variables").iterdir()])


def latency_ms(model_path: Path, window: np.ndarray, threads: int, repeat: int = 20) -> float:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]["index"]
    interpreter.set_tensor(source, window[None])
    interpreter.invoke()  # warm-up: first invoke allocates and packs weights
    times = []
    for _ in range(repeat):
        interpreter.set_tensor(source, window[None])
        started = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - started)
    return 1e3 * float(np.median(times))


def saved_model_latency_ms(loaded, window: np.ndarray, repeat: int = 20) -> float:
    saved_model_scores(loaded, window[None])
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        saved_model_scores(loaded, window[None])
        times.append(time.perf_counter() - started)
    return 1e3 * float(np.median(times))


def pykanto_windows(params, patches: int) -> np.ndarray:
    spec = importlib.util.find_spec("pykanto")
    if spec is None:
        raise SystemExit("--pykanto: pykanto is not installed (make setup installs it)")
    from jibjib.features.audio import AudioError

    windows = []
    for path in sorted((Path(spec.submodule_search_locations[0]) / "data").rglob("*.wav")):
        try:
            windows.append(cut_windows(read_waveform(path, params), params, patches)[:3])
        except AudioError:
            continue
    return np.concatenate(windows)


def measure(export: Path, split: pd.DataFrame, data_dir: Path, threads: int, pykanto: bool) -> list[dict]:
    assets = ExportAssets(export)
    tf, loaded = assets.load_saved_model()
    patches = assets.card["window"]["patches"]
    classes = assets.labels
    test = split[split["split"] == "test"]
    species = test["species"] if "species" in test else test["label"]
    windows, owner, labels = [], [], []
    for index, (path, names) in enumerate(zip(test["path"], species)):
        cut = cut_windows(read_waveform(data_dir / path, assets.params), assets.params, patches, pad=True)
        windows.append(cut)
        owner += [index] * len(cut)
        labels.append(tuple(classes.index(name) for name in names.split(",") if name))  # none: background
    windows, owner = np.concatenate(windows), np.array(owner)
    y = target_matrix(labels, len(classes)) > 0
    with_species = y.any(axis=1)[owner]
    reference = saved_model_scores(loaded, windows)

    def file_f1(scores: np.ndarray) -> float:
        per_file = np.stack([scores[owner == i].mean(axis=0) for i in range(len(y))])
        return classification_metrics(y, per_file, classes)["macro"]["f1"]

    rows = [{"variant": "SavedModel", "bytes": folder_bytes(export), "agreement": 1.0, "max_diff": 0.0,
             "file_macro_f1": file_f1(reference), "latency_ms": saved_model_latency_ms(loaded, windows[0]),
             "windows": int(with_species.sum()), "files": len(y)}]
    for variant, name in VARIANTS.items():
        scores = litert_scores(export / name, windows, threads)
        rows.append({"variant": f"{name} ({variant})", "bytes": (export / name).stat().st_size,
                     "agreement": float(np.mean((scores.argmax(1) == reference.argmax(1))[with_species])),
                     "max_diff": float(np.abs(scores - reference).max()), "file_macro_f1": file_f1(scores),
                     "latency_ms": latency_ms(export / name, windows[0], threads),
                     "windows": int(with_species.sum()), "files": len(y)})
    if pykanto:
        real = pykanto_windows(assets.params, patches)
        diff = np.abs(litert_scores(export / "model.tflite", real, threads) - saved_model_scores(loaded, real)).max()
        rows[1]["pykanto_max_diff"] = float(diff)
        rows[1]["pykanto_windows"] = len(real)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--data-dir", type=Path, default=Path("resources/demo_birds"))
    parser.add_argument("--models", nargs="+", default=["vggish", "convlstm"])
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("results/bench/tflite"))
    parser.add_argument("--pykanto", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    split = pd.read_csv(args.results / "split.tsv", sep="\t", dtype=str, keep_default_na=False)
    table = []
    for model in args.models:
        export = args.results / "export" / model / str(args.version)
        if not (export / "model.tflite").is_file():
            export = export_with_tflite(args.results, model, args.workdir, args.version)
        for row in measure(export, split, args.data_dir, args.threads, args.pykanto):
            table.append({"model": model, **row})
    print("| model | variant | size | top-1 agreement | max abs diff | file macro F1 | latency per window |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in table:
        print(f"| {r['model']} | {r['variant']} | {r['bytes'] / 1e6:.1f} MB | {r['agreement']:.3f} "
              f"({r['windows']} windows) | {r['max_diff']:.1e} | {r['file_macro_f1']:.3f} ({r['files']} files) "
              f"| {r['latency_ms']:.1f} ms |")
    for model in args.models:
        card_path = args.results / "export" / model / str(args.version) / "assets" / "model_card.json"
        card = json.loads(card_path.read_text())
        print(f"{model}: file macro F1 of the evaluation (short files padded and masked, not zero-padded audio): "
              f"{card['metrics']['file_macro_f1']:.3f}")
    for r in table:
        if "pykanto_max_diff" in r:
            print(f"{r['model']} model.tflite on {r['pykanto_windows']} pykanto windows: max abs diff "
                  f"{r['pykanto_max_diff']:.1e}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
