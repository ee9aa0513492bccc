"""The export step: a trained Keras model -> a TensorFlow Serving SavedModel.

Layout (what TF Serving's `--model_base_path` expects, one folder per version;
which version, and current.json: jibjib.serving.publish):

    <export>/<model>/current.json               the version in use
    <export>/<model>/<version>/saved_model.pb
                               variables/
                               assets/labels.txt        one label per line, class order
                               assets/labels.tsv        class_id, label, external_id, counts
                               assets/thresholds.tsv    per-class thresholds tuned on val
                               assets/model_card.json   settings, data counts, metrics, versions

Signatures:
  serving_default (and waveform): waveform float32 (batch, samples), mono 16 kHz -> scores,
      calibrated_scores (batch, classes), top_k_scores, top_k_labels (batch, k).
      The log-mel front end runs inside the graph with the feature step's parameters.
  log_mel: patches float32 (n, 96, 64) of one recording -> scores (units, classes),
      one row per patch for VGGish and per sequence of seq_len patches for the
      ConvLSTM (ceil(n / seq_len) rows, the last one padded), and file_scores
      (1, classes), for clients of the old service, which sent patches.
  windows: waveform float32 (batch, samples), mono 16 kHz, and hop_seconds (a
      scalar) -> scores (batch, windows, classes), start and end (windows,) in
      seconds: the model over windows of its own unit (one patch for VGGish,
      seq_len patches for the ConvLSTM) every hop, as `jibjib analyze` scores them
      (only whole windows; jibjib.params.WindowGrid).
  log_mel_windows: windows float32 (n, window frames, 64) of log-mel -> scores
      (n, classes), for clients that cut the windows themselves (jibjib analyze does).

With `legacy_serving` (export.legacy_serving), `serving_default` is instead the
old query service's contract, `inputs` (n, 96, 64) patches -> `outputs`
(n, classes), with assets/train_id_list.pickle (jibjib.serving.legacy); the
waveform signature is `waveform` in both cases. With `tflite` (export.tflite),
model.tflite, model_fp16.tflite and model_int8.tflite sit beside
saved_model.pb: one window of waveform in, its scores out (jibjib.serving.tflite).

The graph computes in float32, also for a model trained with mixed precision.
Folders and files get the modes of a new folder and file under the umask
(0755 and 0644 under umask 022), so a TF Serving container running as another
user can read them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from jibjib.core import fsutil  # noqa: E402
from jibjib.evaluation.evaluate import model_seq_len  # noqa: E402
from jibjib.features.frontend import mel_matrix, periodic_hann  # noqa: E402
from jibjib.models.loading import load_for_inference  # noqa: E402
from jibjib.core.params import FrontEnd, WindowGrid  # noqa: E402
from jibjib.core.settings import RunSettings  # noqa: E402
from jibjib.serving import legacy, publish  # noqa: E402
from jibjib.core.tflog import quiet_python_logging  # noqa: E402
from jibjib.core.versions import software_versions  # noqa: E402

quiet_python_logging()


def tf_log_mel(waveform: tf.Tensor, params: FrontEnd) -> tf.Tensor:
    """(batch, samples) float32 at params.sample_rate -> (batch, frames, mel_bands): the feature step's log-mel in TF ops."""
    frames = tf.signal.frame(waveform, params.window_samples, params.hop_samples, pad_end=False)
    window = tf.constant(periodic_hann(params.window_samples), tf.float32)
    spectrum = tf.abs(tf.signal.rfft(frames * window, fft_length=[params.fft_length]))
    mel = tf.tensordot(spectrum, tf.constant(mel_matrix(params), tf.float32), axes=1)
    return tf.math.log(mel + params.log_offset)


def tf_patches(log_mel: tf.Tensor, params: FrontEnd) -> tf.Tensor:
    """(batch, frames, bands) -> (batch, patches, patch_frames, bands); a partial tail is dropped, as in to_patches."""
    n = tf.shape(log_mel)[1] // params.patch_frames
    kept = log_mel[:, : n * params.patch_frames]
    return tf.reshape(kept, [tf.shape(log_mel)[0], n, params.patch_frames, params.mel_bands])


class ExportModule(tf.Module):
    """The served graph: front end, classifier and file-level aggregation."""

    def __init__(self, model: keras.Model, classes: list[str], params: FrontEnd, temperature: float,
                 top_k: int, multi_label: bool, assets: dict[str, Path]) -> None:
        super().__init__()
        self.model = model
        self.params = params
        self.seq_len = model_seq_len(model)
        self.labels = tf.constant(classes)
        self.temperature = tf.constant(temperature, tf.float32)
        self.top_k = min(top_k, len(classes))
        self.multi_label = multi_label
        for name, path in assets.items():
            setattr(self, f"{name}_asset", tf.saved_model.Asset(str(path)))
        bands, frames = params.mel_bands, params.patch_frames
        self.serve_waveform = tf.function(self._serve_waveform,
                                          input_signature=[tf.TensorSpec([None, None], tf.float32, "waveform")])
        self.serve_log_mel = tf.function(self._serve_log_mel,
                                         input_signature=[tf.TensorSpec([None, frames, bands], tf.float32, "patches")])
        self.grid = WindowGrid.for_model(params, self.seq_len or 1)
        self.serve_windows = tf.function(self._serve_windows, input_signature=[
            tf.TensorSpec([None, None], tf.float32, "waveform"), tf.TensorSpec([], tf.float32, "hop_seconds")])
        self.serve_log_mel_windows = tf.function(self._serve_log_mel_windows, input_signature=[
            tf.TensorSpec([None, self.grid.window_frames, bands], tf.float32, "windows")])

    def _probabilities(self, logits: tf.Tensor, temperature: tf.Tensor | float = 1.0) -> tf.Tensor:
        logits = tf.cast(logits, tf.float32) / temperature
        return tf.sigmoid(logits) if self.multi_label else tf.nn.softmax(logits)

    def _unit_logits(self, patches: tf.Tensor) -> tf.Tensor:
        """(batch, n, 96, 64) -> logits (batch, units, classes); units are patches or sequences of patches."""
        batch, n = tf.shape(patches)[0], tf.shape(patches)[1]
        frames, bands = self.params.patch_frames, self.params.mel_bands
        if self.seq_len is None:
            logits = self.model(tf.reshape(patches, [-1, frames, bands]), training=False)
            return tf.reshape(logits, [batch, n, -1])
        # As evaluation does (examples.to_sequences, pad): ceil(n / L) sequences, the tail padded with silence
        # and masked at the end (cuDNN's LSTM on a GPU takes only right-padded masks). cuDNN refuses a
        # sequence without a real patch too: an input without a patch is one real patch of silence.
        length = self.seq_len
        units = tf.maximum(1, (n + length - 1) // length)
        padded = tf.pad(patches, [[0, 0], [0, units * length - n], [0, 0], [0, 0]],
                        constant_values=self.params.silence)
        mask = tf.broadcast_to(tf.range(units * length) < tf.maximum(n, 1), [batch, units * length])
        logits = self.model({"patches": tf.reshape(padded, [-1, length, frames, bands]),
                             "mask": tf.reshape(mask, [-1, length])}, training=False)
        return tf.reshape(logits, [batch, units, -1])

    def _serve_waveform(self, waveform: tf.Tensor) -> dict[str, tf.Tensor]:
        tf.debugging.assert_greater_equal(
            tf.shape(waveform)[1], self.params.min_samples,
            message=f"waveform shorter than one patch ({self.params.min_samples} samples at {self.params.sample_rate} Hz)")
        logits = self._unit_logits(tf_patches(tf_log_mel(waveform, self.params), self.params))
        scores = tf.reduce_mean(self._probabilities(logits), axis=1)
        top_scores, top_index = tf.math.top_k(scores, k=self.top_k)
        return {
            "scores": scores,
            "calibrated_scores": tf.reduce_mean(self._probabilities(logits, self.temperature), axis=1),
            "top_k_scores": top_scores,
            "top_k_labels": tf.gather(self.labels, top_index),
        }

    def _window_scores(self, windows: tf.Tensor) -> tf.Tensor:
        """(n, window frames, bands) log-mel windows -> (n, classes) probabilities; every patch is real, none masked."""
        frames, bands = self.params.patch_frames, self.params.mel_bands
        if self.seq_len is None:
            return self._probabilities(self.model(windows, training=False))
        n = tf.shape(windows)[0]
        logits = self.model({"patches": tf.reshape(windows, [n, self.seq_len, frames, bands]),
                             "mask": tf.ones([n, self.seq_len], tf.bool)}, training=False)
        return self._probabilities(logits)

    def _serve_windows(self, waveform: tf.Tensor, hop_seconds: tf.Tensor) -> dict[str, tf.Tensor]:
        tf.debugging.assert_positive(hop_seconds, message="hop_seconds must be positive")
        # As WindowGrid.frames_for computes it (float64, half to even), so both grids agree.
        frames = tf.round(tf.cast(hop_seconds, tf.float64) / tf.constant(self.params.hop_seconds, tf.float64))
        hop = tf.maximum(1, tf.cast(frames, tf.int32))
        log_mel = tf_log_mel(waveform, self.params)
        tf.debugging.assert_greater_equal(
            tf.shape(log_mel)[1], self.grid.window_frames,
            message=f"waveform shorter than one window ({self.grid.window_seconds:g} s)")
        windows = tf.signal.frame(log_mel, self.grid.window_frames, hop, axis=1)  # (batch, w, frames, bands)
        batch, count = tf.shape(windows)[0], tf.shape(windows)[1]
        flat = tf.reshape(windows, [-1, self.grid.window_frames, self.params.mel_bands])
        scores = tf.reshape(self._window_scores(flat), [batch, count, -1])
        start = tf.cast(tf.range(count) * hop, tf.float64) * self.params.hop_seconds
        return {"scores": scores, "start": start, "end": start + self.grid.span_seconds}

    def _serve_log_mel_windows(self, windows: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"scores": self._window_scores(windows)}

    def _serve_log_mel(self, patches: tf.Tensor) -> dict[str, tf.Tensor]:
        unit_scores = self._probabilities(self._unit_logits(patches[None]))[0]
        return {"scores": unit_scores, "file_scores": tf.reduce_mean(unit_scores, axis=0, keepdims=True)}


def _data_counts(split_tsv: Path, labels: pd.DataFrame) -> dict[str, Any]:
    split = pd.read_csv(split_tsv, sep="\t", dtype=str, keep_default_na=False)
    return {
        "files": split["split"].value_counts().to_dict(),
        "recordings": split.groupby("split")["recording_id"].nunique().to_dict(),
        "classes": len(labels),
    }


def window_card(grid: WindowGrid, params: FrontEnd) -> dict[str, Any]:
    """What `jibjib analyze` and the windows signatures score: the model card's `window`."""
    return {"frames": grid.window_frames, "seconds": grid.window_seconds, "span_seconds": grid.span_seconds,
            "patches": grid.window_frames // params.patch_frames, "default_hop_seconds": grid.hop_seconds,
            "tail": "dropped (only whole windows are scored)"}


def model_card(trained: dict[str, Any], metrics: dict[str, Any], counts: dict[str, Any],
               params: FrontEnd, version: int, grid: WindowGrid) -> dict[str, Any]:
    file_level = metrics["file"]
    return {
        "model": trained["model"],
        "version": version,
        "input": {"waveform": f"float32 mono at {params.sample_rate} Hz, at least {params.min_samples} samples",
                  "log_mel": f"float32 patches ({params.patch_frames}, {params.mel_bands})"},
        "window": window_card(grid, params),
        "frontend": {**dataclasses.asdict(params), "fingerprint": params.fingerprint()},
        "training": {"settings": trained["settings"], "epochs_completed": trained["epochs_completed"],
                     "trunk_initialisation": trained.get("trunk_initialisation"),
                     "train_seconds": trained.get("seconds")},
        "data": counts,
        "metrics": {
            "split": metrics["split"],
            "n_files": metrics["n_files"],
            "file_top1_accuracy": file_level["top1_accuracy"],
            "file_macro_f1": file_level["macro"]["f1"],
            "file_cmap": file_level["cmap"],
            "file_macro_roc_auc": file_level["macro_roc_auc"],
            "calibration": metrics["calibration"],
            # The per-species rows are in assets/thresholds.tsv already.
            "thresholds": {k: v for k, v in metrics["thresholds"].items() if k != "per_class"},
        },
        "versions": software_versions(),
    }


def _staging_folder(out: Path) -> Path:
    """An empty hidden folder beside `out`, after removing those of killed exports.

    Made by mkdir, so it gets the mode any new folder gets here (mkdtemp's is 0700).
    """
    fsutil.remove_stale_temps(out.parent)
    staging = out.parent / f".{out.name}{fsutil.TMP_MARK}{os.getpid()}"
    staging.mkdir()
    return staging


def _open_to_umask(root: Path) -> None:
    """Give everything below `root` the mode of `root`, a fresh folder (files without x):
    TensorFlow makes its folders 0755 whatever the umask."""
    folder_mode = root.stat().st_mode & 0o777
    for parent, folders, files in os.walk(root):
        for name in folders:
            os.chmod(os.path.join(parent, name), folder_mode)
        for name in files:
            os.chmod(os.path.join(parent, name), folder_mode & 0o666)


def export_sources(model_dir: Path, eval_dir: Path, labels_tsv: Path, split_tsv: Path) -> list[Path]:
    """The files an export is computed from, with the code that writes it: what its source digest covers."""
    code = Path(__file__).parent
    return [model_dir / "model.keras", model_dir / "train.json", eval_dir / "metrics.json",
            eval_dir / "thresholds.tsv", labels_tsv, split_tsv, code / "export.py", code / "legacy.py",
            code / "tflite.py"]


def export(model_dir: str | os.PathLike, eval_dir: str | os.PathLike, labels_tsv: str | os.PathLike,
           split_tsv: str | os.PathLike, out_dir: str | os.PathLike, params: FrontEnd,
           top_k: int = 5, tflite: bool = False, legacy_serving: bool = False,
           version: int | str = publish.AUTO, keep_versions: int = 3,
           features_dir: str | os.PathLike | None = None) -> Path:
    """Write the SavedModel to a version folder of out_dir (<export>/<model>), atomically (a kill leaves no half
    export), then out_dir/current.json; returns the version folder.

    `version`: a number, or `auto` (jibjib.serving.publish): a new number unless the newest version was
    exported from the same sources, then kept as it is; `keep_versions` of the automatic ones are kept.
    `tflite` also writes the TFLite files beside saved_model.pb, the analysis ones checked against the
    SavedModel on the val split's windows (from `features_dir`); `legacy_serving` gives `serving_default`
    the old query service's contract.
    """
    model_dir, eval_dir, model_folder = Path(model_dir), Path(eval_dir), Path(out_dir)
    trained = json.loads((model_dir / "train.json").read_text())
    settings = {"frontend": dataclasses.asdict(params), "top_k": top_k, "tflite": tflite,
                "legacy_serving": legacy_serving, "versions": software_versions()}
    digest = publish.source_digest(export_sources(model_dir, eval_dir, Path(labels_tsv), Path(split_tsv)), settings)
    number, written = publish.choose_version(model_folder, version, digest)
    out = model_folder / str(number)
    if written:
        print(f"export {trained['model']}: {out} is current (exported from the same sources)", file=sys.stderr)
    else:
        _write_version(model_dir, eval_dir, Path(labels_tsv), Path(split_tsv), out, params, top_k, tflite,
                       legacy_serving, digest, features_dir)
    publish.write_current(model_folder, trained["model"], number, digest)
    if version == publish.AUTO:
        removed = publish.remove_old_versions(model_folder, keep_versions, number)
        if removed:
            print(f"export {trained['model']}: removed versions {', '.join(map(str, removed))} "
                  f"(export.keep_versions: {keep_versions})", file=sys.stderr)
    return out


def _write_version(model_dir: Path, eval_dir: Path, labels_tsv: Path, split_tsv: Path, out: Path, params: FrontEnd,
                   top_k: int, tflite: bool, legacy_serving: bool, digest: str,
                   features_dir: str | os.PathLike | None) -> None:
    """The SavedModel, its assets and (with `tflite`) the TFLite files in the version folder `out`."""
    trained = json.loads((model_dir / "train.json").read_text())
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    labels = pd.read_csv(labels_tsv, sep="\t", keep_default_na=False)
    classes = labels["label"].astype(str).tolist()
    model = load_for_inference(model_dir / "model.keras")
    seq_len = model_seq_len(model)
    grid = WindowGrid.for_model(params, seq_len or 1)
    card = model_card(trained, metrics, _data_counts(split_tsv, labels), params, int(out.name), grid)
    card["source_digest"] = digest
    multi_label = RunSettings.from_dict(trained["settings"]).net.multi_label
    card["serving"] = legacy.card_section(len(classes), seq_len) if legacy_serving else {
        "serving_default": "waveform", "waveform_signature": "waveform"}

    with tempfile.TemporaryDirectory() as scratch:
        beside: dict[str, Path] = {}
        if tflite:
            from jibjib.serving import tflite as tflite_files

            card["tflite"] = tflite_files.convert(model, params, seq_len, multi_label, Path(scratch))
            windows = (tflite_files.val_windows(split_tsv, features_dir, params, seq_len or 1) if features_dir
                       else np.zeros((0, grid.window_frames, params.mel_bands), np.float32))
            card["tflite"]["analysis"] = tflite_files.convert_for_analysis(model, params, seq_len, multi_label,
                                                                           Path(scratch), windows)
            beside = {name: Path(scratch) / name
                      for name in [*card["tflite"]["files"], *card["tflite"]["analysis"]["files"]]}
        save_export(out, model, classes, labels_tsv, eval_dir / "thresholds.tsv", card, params,
                    float(metrics["calibration"]["temperature"]), top_k, multi_label,
                    legacy_serving=legacy_serving, beside=beside)
    extras = (", legacy serving_default" if legacy_serving else "") + (
        f", TFLite {card['tflite']['ops']} ops; analysis file {card['tflite']['analysis']['choice']}" if tflite else "")
    print(f"export {trained['model']}: {out} ({len(classes)} classes{extras})", file=sys.stderr)


def save_export(out: Path, model: keras.Model, classes: list[str], labels_tsv: Path, thresholds_tsv: Path,
                card: dict[str, Any], params: FrontEnd, temperature: float = 1.0, top_k: int = 5,
                multi_label: bool = False, legacy_serving: bool = False, beside: dict[str, Path] | None = None) -> None:
    """Write the SavedModel with its signatures and assets to `out`, atomically: a kill leaves no half export.

    `beside`: files (the TFLite models) moved next to saved_model.pb under their names.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_folder(out)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            (scratch / "labels.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
            shutil.copy(labels_tsv, scratch / "labels.tsv")
            shutil.copy(thresholds_tsv, scratch / "thresholds.tsv")
            fsutil.write_json(scratch / "model_card.json", card)
            assets = {"labels": scratch / "labels.txt", "labels_table": scratch / "labels.tsv",
                      "thresholds": scratch / "thresholds.tsv", "model_card": scratch / "model_card.json"}
            if legacy_serving:
                assets["train_id_list"] = legacy.write_train_id_list(scratch / "train_id_list.pickle", classes)
            module = ExportModule(model, classes, params, temperature, top_k, multi_label, assets)
            signatures = {"serving_default": module.serve_waveform, "waveform": module.serve_waveform,
                          "log_mel": module.serve_log_mel, "windows": module.serve_windows,
                          "log_mel_windows": module.serve_log_mel_windows}
            if legacy_serving:
                module.serve_legacy = legacy.legacy_function(module)
                signatures["serving_default"] = module.serve_legacy
            tf.saved_model.save(module, str(staging), signatures=signatures)
        for name, path in (beside or {}).items():
            shutil.move(path, staging / name)
        _open_to_umask(staging)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
