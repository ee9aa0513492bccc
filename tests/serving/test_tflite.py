"""export.tflite: the TFLite files, checked with their own runtime (LiteRT, ai-edge-litert)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY, run_snakemake
from jibjib.core.params import VGGISH

from jibjib.serving.predict import read_waveform
from jibjib.serving.tflite import VARIANTS, cut_windows, litert_scores, saved_model_scores

MODELS = ["vggish", "convlstm"]


def patches_per_window(model: str) -> int:
    return 1 if model == "vggish" else TINY["convlstm"]["seq_len"]


def loaded(export: Path):
    import tensorflow as tf

    return tf.saved_model.load(str(export))


def pykanto_windows(patches: int, per_rate: int = 2) -> np.ndarray:
    """Whole windows of real recordings (pykanto's), two files per sample rate, resampled as predict does."""
    spec = importlib.util.find_spec("pykanto")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pykanto (real bird recordings) is not installed: run `make setup`")
    import soundfile

    by_rate: dict[int, list[Path]] = {}
    for path in sorted((Path(spec.submodule_search_locations[0]) / "data").rglob("*.wav")):
        by_rate.setdefault(soundfile.info(str(path)).samplerate, []).append(path)
    windows = [cut_windows(read_waveform(path, VGGISH), VGGISH, patches)[:4]
               for paths in by_rate.values() for path in paths[:per_rate]]
    assert len(by_rate) >= 3
    return np.concatenate(windows)


def demo_windows(tmp_path: Path, patches: int) -> np.ndarray:
    """Windows of a small synthetic demo set (mixed rates, some stereo), as `make demo` writes it."""
    from jibjib.demo.species import make_demo

    make_demo(tmp_path / "demo", n_species=3, recordings_per_species=1, slice_seconds=6.0, max_slices=1)
    files = sorted((tmp_path / "demo").rglob("*.wav"))
    return np.concatenate([cut_windows(read_waveform(path, VGGISH), VGGISH, patches) for path in files])


def test_default_export_has_no_tflite_and_serves_waveforms(tiny_workflow: Path) -> None:
    for model in MODELS:
        export = tiny_workflow / "results" / "export" / model / "1"
        assert not list(export.glob("*.tflite")) and not (export / "assets" / "train_id_list.pickle").exists()
        card = json.loads((export / "assets" / "model_card.json").read_text())
        assert "tflite" not in card and card["serving"]["serving_default"] == "waveform"
    signature = loaded(export).signatures["serving_default"]
    assert list(signature.structured_input_signature[1]) == ["waveform"]


@pytest.mark.parametrize("model", MODELS)
def test_files_and_model_card(serving_exports: dict[str, Path], model: str) -> None:
    export = serving_exports[model]
    card = json.loads((export / "assets" / "model_card.json").read_text())["tflite"]
    assert set(card["files"]) == set(VARIANTS.values())
    sizes = {name: (export / name).stat().st_size for name in VARIANTS.values()}
    assert {name: entry["bytes"] for name, entry in card["files"].items()} == sizes
    assert sizes["model_int8.tflite"] < sizes["model_fp16.tflite"] < sizes["model.tflite"]
    assert card["ops"] == "builtin" and card["flex_reason"] is None
    expected_samples = VGGISH.window_samples + (patches_per_window(model) * 96 - 1) * VGGISH.hop_samples
    assert card["window_samples"] == expected_samples == card["input"]["shape"][1]
    assert "dynamic range" in card["files"]["model_int8.tflite"]["quantisation"]
    assert (export / "assets" / "labels.txt").read_text().split() == \
        pd.read_csv(export / "assets" / "labels.tsv", sep="\t")["label"].tolist()


@pytest.mark.parametrize("model", MODELS)
def test_litert_loads_builtin_only_models_of_one_window(serving_exports: dict[str, Path], model: str) -> None:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    classes = len((serving_exports[model] / "assets" / "labels.txt").read_text().split())
    for name in VARIANTS.values():
        # Without the default XNNPACK delegate, so the ops are the model's own (no DELEGATE nodes); without
        # the Flex delegate, a Flex op would fail allocate_tensors.
        interpreter = Interpreter(model_path=str(serving_exports[model] / name),
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interpreter.allocate_tensors()
        [source], [target] = interpreter.get_input_details(), interpreter.get_output_details()
        assert list(source["shape"]) == [1, json.loads((serving_exports[model] / "assets" / "model_card.json")
                                                       .read_text())["tflite"]["window_samples"]]
        assert source["dtype"] == np.float32 and target["dtype"] == np.float32
        assert list(target["shape"]) == [1, classes]
        ops = {op["op_name"] for op in interpreter._get_ops_details()}
        assert not {op for op in ops if op.startswith("Flex") or op == "DELEGATE"}, ops
        assert "CONV_2D" in ops and "LOG" in ops


@pytest.mark.parametrize("model", MODELS)
def test_float32_matches_the_saved_model_on_real_and_demo_recordings(serving_exports: dict[str, Path],
                                                                     tmp_path: Path, model: str) -> None:
    export = serving_exports[model]
    windows = np.concatenate([pykanto_windows(patches_per_window(model)),
                              demo_windows(tmp_path, patches_per_window(model))])
    assert len(windows) >= 10
    expected = saved_model_scores(loaded(export), windows)
    got = litert_scores(export / "model.tflite", windows)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4
    assert np.allclose(got.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_quantised_models_agree_on_the_test_split(tiny_workflow: Path, serving_exports: dict[str, Path],
                                                  model: str) -> None:
    """Top-1 of fp16 and int8 against the SavedModel on every whole window of the test split's files."""
    export = serving_exports[model]
    split = pd.read_csv(tiny_workflow / "results" / "split.tsv", sep="\t")
    paths = split.loc[split["split"] == "test", "path"]
    windows = np.concatenate([cut_windows(read_waveform(tiny_workflow / "birds" / p, VGGISH), VGGISH,
                                          patches_per_window(model)) for p in paths])
    assert len(windows) >= len(paths)
    reference = saved_model_scores(loaded(export), windows).argmax(axis=1)
    for name in ("model_fp16.tflite", "model_int8.tflite"):
        agreement = np.mean(litert_scores(export / name, windows).argmax(axis=1) == reference)
        assert agreement >= 0.98, f"{name}: top-1 agrees on {agreement:.1%} of {len(windows)} windows"


@pytest.mark.parametrize("model", MODELS)
def test_the_analysis_files_score_as_the_saved_model(serving_exports: dict[str, Path], tmp_path: Path,
                                                     model: str) -> None:
    """windows.tflite (log-mel windows in, any number) against the SavedModel's log_mel_windows; the card's
    choice of file for `analyze --engine tflite` follows the int8 file's agreement on the val windows."""
    import tensorflow as tf

    from jibjib.analysis.analyzer import Analyzer
    from jibjib.features.frontend import waveform_to_log_mel
    from jibjib.serving.litert import LiteRTModel
    from jibjib.serving.tflite import INT8_MIN_AGREEMENT

    export = serving_exports[model]
    section = json.loads((export / "assets" / "model_card.json").read_text())["tflite"]["analysis"]
    assert section["val_windows"] > 0 and 0 <= section["int8_top1_agreement"] <= 1
    int8 = section["int8_top1_agreement"] >= INT8_MIN_AGREEMENT
    assert section["file"] == ("windows_int8.tflite" if int8 else "windows.tflite"), section
    frames = patches_per_window(model) * 96
    log_mel = np.concatenate([waveform_to_log_mel(w, 16000) for w in demo_windows(tmp_path, patches_per_window(model))])
    windows = log_mel[: log_mel.shape[0] // frames * frames].reshape(-1, frames, 64)
    assert len(windows) >= 5
    expected = loaded(export).signatures["log_mel_windows"](windows=tf.constant(windows))["scores"].numpy()
    runner = LiteRTModel(export / "windows.tflite", threads=1)
    got = np.concatenate([runner(windows[:3]), runner(windows[3:])])  # two batch sizes: the input is resized
    assert np.abs(got - expected).max() < 1e-4
    assert Analyzer(export, engine="tflite").engine == section["file"]


def test_changing_a_flag_reruns_the_exports(tiny_workflow: Path) -> None:
    """The flags are params of the export rules: a dry run plans both exports again, with the options."""
    config = {**TINY, "data_dir": str(tiny_workflow / "birds")}
    unchanged = run_snakemake(tiny_workflow, "--dry-run", config=config)
    assert "export_vggish" not in unchanged.stdout + unchanged.stderr
    for flag, option in (("tflite", "--tflite"), ("legacy_serving", "--legacy-serving")):
        planned = run_snakemake(tiny_workflow, "--dry-run", "--printshellcmds",
                                config={**config, "export": {flag: True}})
        text = planned.stdout + planned.stderr
        assert "export_vggish" in text and "export_convlstm" in text, text[-2000:]
        assert option in text
