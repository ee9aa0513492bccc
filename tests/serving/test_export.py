"""Evaluation, export, report and predict, on one tiny run of the whole workflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, SPECIES, TINY, chirp, run_snakemake, write_wav
from jibjib.features.frontend import log_mel
from jibjib.core.params import VGGISH, WindowGrid

EVAL_FILES = ["metrics.json", "report.md", "file_scores.tsv", "confusion.tsv", "confusion.png",
              "reliability.png", "training_curves.png", "thresholds.tsv"]


@pytest.fixture(scope="module")
def run(tiny_workflow: Path) -> Path:
    return tiny_workflow


def python(code: str, cwd: Path) -> str:
    """Run code in a fresh interpreter (nothing shared with this process's TensorFlow)."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                            timeout=600, env={"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def jibjib(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # TensorFlow's C++ logging forced on: stderr must still hold only jibjib's lines.
    return subprocess.run([sys.executable, "-m", "jibjib", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "0", "PATH": ""})


def window_count(npz: Path, model: str) -> int:
    """How many windows `jibjib analyze` scores in one file at its default hop: every whole window of one patch
    (VGGish) or seq_len patches (ConvLSTM) every half window; no padded tail."""
    with np.load(npz) as z:
        frames = z["log_mel"].shape[0]
    return WindowGrid.for_model(VGGISH, 1 if model == "vggish" else TINY["convlstm"]["seq_len"]).count(frames)


@pytest.mark.parametrize("model", ["vggish", "convlstm"])
def test_evaluation_writes_its_contract(run: Path, model: str) -> None:
    out = run / "results" / "eval" / model
    assert all((out / name).stat().st_size > 0 for name in EVAL_FILES)
    m = json.loads((out / "metrics.json").read_text())
    split = pd.read_csv(run / "results" / "split.tsv", sep="\t")
    assert m["n_files"] == (split["split"] == "test").sum()
    assert m["patch_unit"] == ("patch" if model == "vggish" else "sequence")
    for level in ("file", "patch"):
        assert {"top1_accuracy", "top5_accuracy", "macro", "micro", "cmap", "macro_roc_auc", "ece",
                "per_class", "confusion"} <= set(m[level])
        assert [row["label"] for row in m[level]["per_class"]] == sorted(SPECIES)
    # A 2 s file holds 2 patches: two VGGish examples, one ConvLSTM sequence of seq_len 2.
    assert m["file"]["n"] == m["n_files"]
    assert m["patch"]["n"] == m["n_files"] * (2 if model == "vggish" else 1)
    assert m["calibration"]["fitted_on"] == "val" and m["calibration"]["temperature"] > 0
    scores = pd.read_csv(out / "file_scores.tsv", sep="\t")
    assert len(scores) == m["n_files"]
    assert np.allclose(scores.filter(like="score_").sum(axis=1), 1.0, atol=1e-5)
    confusion = pd.read_csv(out / "confusion.tsv", sep="\t", index_col=0)
    assert confusion.to_numpy().sum() == m["n_files"] and list(confusion.columns) == sorted(SPECIES)
    thresholds = pd.read_csv(out / "thresholds.tsv", sep="\t")
    assert list(thresholds["label"]) == sorted(SPECIES)
    statuses = {"ok", "unreachable", "fallback", "fallback_unreachable"}
    assert set(thresholds["status"]) <= statuses
    # Two val files per species, under evaluate.min_threshold_support (3): all take the pooled rule.
    assert set(thresholds["status"]) <= {"fallback", "fallback_unreachable"} and (thresholds["support"] == 2).all()
    window_columns = ["window_threshold", "window_precision", "window_precision_low", "window_precision_high",
                      "window_recall", "window_support", "window_status", "window_test_support",
                      "window_test_detections", "window_test_precision", "window_test_precision_low",
                      "window_test_precision_high", "window_test_recall"]
    assert list(thresholds.columns[-len(window_columns):]) == window_columns
    assert set(thresholds["window_status"]) <= statuses
    assert thresholds["window_threshold"].notna().sum() == thresholds["window_status"].isin(["ok", "fallback"]).sum()
    # Window thresholds are fitted on every val window analyze would cut, labelled with its file's species:
    # a 2 s file gives 3 VGGish windows (0.96 s every 0.48 s) and one ConvLSTM window of 2 patches, never the
    # zero-padded second sequence the file score averages.
    windows_of_file = {path: window_count(run / "results" / "features" / Path(path).with_suffix(".npz"), model)
                       for path in split["path"]}
    for name, column in (("val", "window_support"), ("test", "window_test_support")):
        rows = split[split["split"] == name]
        expected = {label: sum(windows_of_file[path] for path in rows.loc[rows["label"] == label, "path"])
                    for label in SPECIES}
        assert dict(zip(thresholds["label"], thresholds[column])) == expected, name
    assert m["thresholds"]["window_hop_seconds"] == pytest.approx(0.48 if model == "vggish" else 0.96)
    window = m["thresholds"]["window"]
    assert window["classes_with_threshold"] == thresholds["window_status"].isin(["ok", "fallback"]).sum()
    assert {"classes", "macro_precision", "macro_recall"} <= set(window["test"])
    assert m["thresholds"]["window_unit"] == m["patch_unit"]


@pytest.mark.parametrize("model", ["vggish", "convlstm"])
def test_export_layout_and_signatures(run: Path, model: str) -> None:
    export = run / "results" / "export" / model / "1"
    assert (export / "saved_model.pb").is_file() and (export / "variables").is_dir()
    assets = export / "assets"
    assert (assets / "labels.txt").read_text().split() == sorted(SPECIES)
    card = json.loads((assets / "model_card.json").read_text())
    assert card["model"] == model and card["data"]["classes"] == len(SPECIES)
    assert {"tensorflow", "keras", "numpy", "jibjib", "python"} <= set(card["versions"])
    assert card["training"]["settings"][model]["epochs"] == TINY[model]["epochs"]
    # The card carries the threshold summaries, the window ones too, and leaves the rows to assets/thresholds.tsv.
    assert {"raw", "calibrated", "window", "window_unit"} <= set(card["metrics"]["thresholds"])
    assert "per_class" not in card["metrics"]["thresholds"]
    assert "window_threshold" in pd.read_csv(assets / "thresholds.tsv", sep="\t").columns
    shown = subprocess.run([str(Path(sys.executable).parent / "saved_model_cli"), "show", "--all", "--dir", str(export)],
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "signature_def['serving_default']" in shown.stdout and "signature_def['log_mel']" in shown.stdout
    # The staging folder was renamed into place, and the one of a killed export removed.
    assert not list(export.parent.glob(".*tmp-*"))


@pytest.mark.parametrize("model", ["vggish", "convlstm"])
def test_export_is_readable_by_other_users(run: Path, model: str) -> None:
    """Under umask 022 the modes of any new folder and file (mkdtemp's 0700 shut a TF Serving user out)."""
    export = run / "results" / "export" / model / "1"
    modes = {export: 0o755}
    for parent, folders, files in os.walk(export):
        modes |= {Path(parent, name): 0o755 for name in folders} | {Path(parent, name): 0o644 for name in files}
    assert len(modes) >= 10  # saved_model.pb, variables/, assets/ and the four assets at least
    wrong = {str(path.relative_to(export)): f"{path.stat().st_mode & 0o777:o}"
             for path, mode in modes.items() if path.stat().st_mode & 0o777 != mode}
    assert wrong == {}


def test_a_mixed_precision_model_is_loaded_to_compute_in_float32(tmp_path: Path) -> None:
    """model.keras of a mixed_float16 run: same weights, float32 layers (nested ones too), float16-close outputs."""
    import keras

    from jibjib.models.convlstm import convlstm_classifier
    from jibjib.models.loading import load_for_inference

    def all_layers(model: keras.Model):
        for layer in model.layers:
            yield layer
            if isinstance(layer, keras.Model):
                yield from all_layers(layer)

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = convlstm_classifier(3, seq_len=2, conv_filters=(4,), lstm_units=8, dense_units=8, dropout=0.0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.save(tmp_path / "model.keras")
    # Every layer computes in float16 but the logits, which stay float32 (models/convlstm.py).
    assert {layer.dtype_policy.name for layer in all_layers(mixed) if layer.name != "logits"} == {"mixed_float16"}

    loaded = load_for_inference(tmp_path / "model.keras")
    assert {layer.dtype_policy.name for layer in all_layers(loaded)} == {"float32"}
    assert any(isinstance(layer, keras.Model) for layer in loaded.layers)  # the patch encoder
    weights, expected = loaded.get_weights(), mixed.get_weights()
    assert len(weights) == len(expected) and all(np.array_equal(a, b) for a, b in zip(weights, expected))
    rng = np.random.default_rng(0)
    inputs = {"patches": rng.standard_normal((4, 2, 96, 64)).astype(np.float32),
              "mask": np.array([[True, True], [True, False], [True, True], [False, True]])}
    got, half = loaded(inputs), mixed(inputs)
    assert got.dtype == "float32" and half.dtype == "float32"
    assert np.allclose(np.asarray(got), np.asarray(half, np.float32), atol=1e-2, rtol=1e-2)
    loaded.save(tmp_path / "float32.keras")  # a float32 model loads as it is
    again = load_for_inference(tmp_path / "float32.keras")
    assert {layer.dtype_policy.name for layer in all_layers(again)} == {"float32"}


@pytest.mark.parametrize("model", ["vggish", "convlstm"])
def test_reloaded_export_reproduces_the_evaluation(run: Path, model: str) -> None:
    """A fresh process loads the export: both signatures give the evaluation's file scores."""
    out = python(f"""
        import json, numpy as np, pandas as pd, soundfile, tensorflow as tf
        from jibjib.training.examples import load_patches
        loaded = tf.saved_model.load("results/export/{model}/1")
        table = pd.read_csv("results/eval/{model}/file_scores.tsv", sep="\\t")
        rows = []
        for path in table["path"]:
            patches = load_patches("results/features/" + path[:-4] + ".npz")
            by_patches = loaded.signatures["log_mel"](patches=tf.constant(patches))["file_scores"].numpy()[0]
            samples, rate = soundfile.read("birds/" + path, dtype="float32")
            by_wave = loaded.signatures["serving_default"](waveform=tf.constant(samples[None]))
            rows.append({{"patches": by_patches.tolist(), "wave": by_wave["scores"].numpy()[0].tolist(),
                          "top": by_wave["top_k_labels"].numpy()[0][0].decode()}})
        print(json.dumps(rows))
    """, cwd=run)
    table = pd.read_csv(run / "results" / "eval" / model / "file_scores.tsv", sep="\t")
    expected = table.filter(like="score_").to_numpy()
    rows = json.loads(out)
    assert np.abs(np.array([r["patches"] for r in rows]) - expected).max() < 1e-4
    assert np.abs(np.array([r["wave"] for r in rows]) - expected).max() < 1e-4
    assert [r["top"] for r in rows] == list(table["predicted"])


def test_in_graph_front_end_matches_the_feature_step() -> None:
    import tensorflow as tf

    from jibjib.serving.export import tf_log_mel
    from jibjib.core.params import VGGISH, WindowGrid

    samples = chirp(3.0, 16000, seed=3)
    expected = log_mel(samples)
    got = tf_log_mel(tf.constant(samples[None]), VGGISH).numpy()[0]
    assert got.shape == expected.shape
    assert np.mean(np.abs(got - expected)) < 1e-3
    assert np.max(np.abs(got - expected)) < 1e-2


def test_report_builds(run: Path) -> None:
    run_snakemake(run, "--report", "report.zip", config={**TINY, "data_dir": str(run / "birds")})
    import zipfile

    with zipfile.ZipFile(run / "report.zip") as archive:
        names = archive.namelist()
    for name in ("confusion.png", "reliability.png", "training_curves.png", "metrics.json", "files.tsv"):
        assert any(n.endswith(name) for n in names), name


def test_predict_scores_good_files_and_reports_bad_ones(run: Path, tmp_path: Path) -> None:
    good_16k = next((run / "birds" / "Beta_two").glob("*.wav"))
    good_22k = write_wav(tmp_path / "resampled.wav", chirp(2.0, 22050, f0=2200, seed=5), 22050)
    short = write_wav(tmp_path / "short.wav", chirp(0.5, 16000), 16000)
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    export = "results/export/vggish/1"
    result = jibjib("predict", "--model", export, str(good_16k), str(short), str(text), str(good_22k),
                    "--top-k", "2", cwd=run)
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2
    assert f"{short}: too_short" in errors[0] and f"{text}: unreadable" in errors[1]
    table = pd.read_csv(pd.io.common.StringIO(result.stdout), sep="\t")
    assert list(table.columns) == ["file", "rank", "label", "score"]
    assert list(table["file"]) == [str(good_16k)] * 2 + [str(good_22k)] * 2
    assert set(table["label"]) <= set(SPECIES) and (table["score"].between(0, 1)).all()

    result = jibjib("predict", "--model", export, str(good_16k), "--json", "--thresholds", cwd=run)
    assert result.returncode == 0, result.stderr
    [prediction] = json.loads(result.stdout)
    assert prediction["file"] == str(good_16k) and len(prediction["predictions"]) == 3
    thresholds = pd.read_csv(run / "results" / "eval" / "vggish" / "thresholds.tsv", sep="\t")
    threshold_of = dict(zip(thresholds["label"], thresholds["threshold"]))
    for row in prediction["predictions"]:
        expected = threshold_of[row["label"]]
        assert row["detected"] == (not np.isnan(expected) and row["score"] >= expected)


def test_predict_refuses_what_the_feature_step_rejects(run: Path, tmp_path: Path) -> None:
    low_rate = write_wav(tmp_path / "phone.wav", chirp(3.0, 1000, f0=100, f1=400), 1000)
    result = jibjib("predict", "--model", "results/export/convlstm/1", str(low_rate), cwd=run)
    assert result.returncode == 1 and result.stdout.strip() == "file\trank\tlabel\tscore"
    assert result.stderr.strip() == f"jibjib predict: {low_rate}: sample_rate_too_low: " \
        "1000 Hz cannot carry the upper half of the 125-7500 Hz mel range (needs 3802 Hz)"


def test_predict_names_a_folder_that_is_not_an_export(run: Path) -> None:
    result = jibjib("predict", "--model", "results/models/vggish", "x.wav", cwd=run)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("jibjib predict: error: results/models/vggish is not")


def test_confusion_figure_keeps_a_readable_row_per_class(tmp_path: Path) -> None:
    import matplotlib.image

    from jibjib.evaluation import figures

    n = 60
    figures.confusion_matrix(tmp_path / "c.png", np.eye(n, dtype=int) * 5, [f"Genus_species_{i}" for i in range(n)], "t")
    height, width = matplotlib.image.imread(tmp_path / "c.png").shape[:2]
    # At 110 dpi a 0.22 inch row is 24 px: room for a 7 pt label per class.
    assert height / n > 20 and width / n > 20


# --------------------------------------------------------------------------
# Versions: a new export is a new TF Serving version, old ones are kept up to export.keep_versions


def fake_version(model_folder: Path, number: int, digest: str | None) -> Path:
    """A version folder as an export leaves it (digest None: a folder someone else put there)."""
    folder = model_folder / str(number)
    (folder / "assets").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    if digest is not None:
        (folder / "assets" / "model_card.json").write_text(json.dumps({"source_digest": digest}))
    return folder


def test_versions_are_chosen_by_source_digest_and_pruned(tmp_path: Path) -> None:
    from jibjib.serving import publish

    base = tmp_path / "vggish"
    assert publish.choose_version(base, "auto", "d1") == (1, False)
    fake_version(base, 1, "d1")
    assert publish.choose_version(base, "auto", "d1") == (1, True)  # the same sources: kept, not rewritten
    assert publish.choose_version(base, "auto", "d2") == (2, False)  # a retrain: a new version for TF Serving
    assert publish.choose_version(base, 1, "d2") == (1, False)  # a fixed number is rewritten in place
    for number in (2, 3, 4):
        fake_version(base, number, f"d{number}")
    fake_version(base, 9, None)  # not ours: never removed, but the next number goes above it
    (base / "notes").mkdir()
    assert publish.choose_version(base, "auto", "d5") == (10, False)
    assert publish.remove_old_versions(base, keep=2, current=4) == [1, 2]
    assert publish.remove_old_versions(base, keep=1, current=3) == []  # never the current one
    assert sorted(publish.version_folders(base)) == [3, 4, 9]
    current = publish.write_current(base, "vggish", 4, "d4")
    assert current == {"model": "vggish", "version": 4, "folder": "4", "source_digest": "d4", "versions": [3, 4, 9]}
    # What --model accepts: the model folder or its current.json (the current version), or a version folder.
    assert publish.resolve_export(base) == publish.resolve_export(base / "current.json") == base / "4"
    assert publish.resolve_export(base / "3") == base / "3"
    (base / "current.json").write_text("not json")
    assert publish.resolve_export(base) == base


def test_a_retrained_model_is_a_new_version_that_analysis_follows(tiny_workflow: Path, tmp_path: Path) -> None:
    """A retrain (another head size) through the workflow: version 2 beside version 1, current.json names it,
    and the analysis rule scored the recordings with it."""
    import shutil

    from jibjib.analysis.analyzer import export_digest
    from jibjib.analysis.scores import load_scores

    workdir = tmp_path / "workflow"
    shutil.copytree(tiny_workflow, workdir, symlinks=True)
    field = workdir / "field"
    write_wav(field / "a.wav", chirp(3.0, 16000), 16000)
    base = workdir / "results" / "export" / "vggish"
    first = json.loads((base / "current.json").read_text())
    assert (first["version"], first["versions"]) == (1, [1])
    config = {**TINY, "data_dir": str(workdir / "birds"), "models": ["vggish"],
              "vggish": {**TINY["vggish"], "head_units": 6},
              "analyze": {"input_dir": str(field), "shards": 1, "min_score": 0.5}}
    run_snakemake(workdir, config=config)
    current = json.loads((base / "current.json").read_text())
    assert (current["version"], current["versions"]) == (2, [1, 2])
    card = json.loads((base / "2" / "assets" / "model_card.json").read_text())
    assert card["version"] == 2 and card["training"]["settings"]["vggish"]["head_units"] == 6
    assert card["source_digest"] == current["source_digest"] != first["source_digest"]
    scores = load_scores(workdir / "results" / "analysis" / "vggish" / "scores" / "a.npz")
    assert scores.export_digest == export_digest(base / "2")
    # Nothing changed: nothing runs.  An export forced to run again from the same sources keeps version 2
    # as it is (TF Serving has nothing new to load), and the analysis reuses its scores.
    assert "Nothing to be done" in run_snakemake(workdir, config=config).stderr
    written = (base / "2" / "saved_model.pb").stat().st_mtime_ns
    run_snakemake(workdir, "--forcerun", "export_vggish", config=config)
    assert json.loads((base / "current.json").read_text()) == current
    assert (base / "2" / "saved_model.pb").stat().st_mtime_ns == written
    shard = next((workdir / "results" / "analysis" / "vggish" / "shards").glob("*.tsv"))
    assert pd.read_csv(shard, sep="\t").set_index("file").at["a.wav", "status"] == "reused"


def test_an_empty_input_is_one_silent_patch_to_the_convlstm_never_a_fully_masked_row() -> None:
    """cuDNN's LSTM (on a GPU) refuses a sequence without a real patch and masks that are not right-padded:
    the export's sequences are right-padded, and an input without a patch is scored as one of silence."""
    import tensorflow as tf

    from jibjib.models.convlstm import convlstm_classifier
    from jibjib.serving.export import ExportModule

    model = convlstm_classifier(2, seq_len=3, conv_filters=(4,), lstm_units=4, dense_units=4, dropout=0.0)
    module = ExportModule(model, ["a", "b"], VGGISH, 1.0, 2, False, {})
    masks = []

    def recording(inputs, training=False):
        masks.append(inputs["mask"].numpy())
        return model(inputs, training=training)

    module.model = recording
    rng = np.random.default_rng(0)
    module._unit_logits(tf.constant(rng.normal(-3, 1, (1, 4, 96, 64)), tf.float32))
    empty = module._unit_logits(tf.zeros([1, 0, 96, 64]))
    assert masks[0].tolist() == [[True, True, True], [True, False, False]]
    assert masks[1].tolist() == [[True, False, False]]
    silence = np.full((1, 3, 96, 64), np.log(VGGISH.log_offset), np.float32)
    expected = model({"patches": silence, "mask": np.array([[True, False, False]])}, training=False)
    np.testing.assert_allclose(empty.numpy()[0], np.asarray(expected), rtol=1e-6)
