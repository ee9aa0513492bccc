"""Background folders (never a class) and multi-species folders (a positive for each species named).

From folder names to labels.tsv, split.tsv's `species`, the QC table and the
split log; the config error for a multi-species folder with a softmax model;
metrics, thresholds and the "no species" rate against numbers worked out by
hand; predict's and analyze's "no species".
"""

from __future__ import annotations

import io
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
import yaml

from conftest import PREPARATION_TARGETS, REPO, chirp, make_tree, run_snakemake, write_wav
from jibjib import cli
from jibjib.evaluation import metrics, thresholds as fitting
from jibjib.serving import predict
from jibjib.core.errors import LabelError
from jibjib.labels.folders import DEFAULT_BACKGROUND, folder_species, species_column
from jibjib.labels.index import label_index
from jibjib.labels.split import SPLITS, assign_splits
from test_labels import qc_rows

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def test_folder_names_give_species() -> None:
    assert folder_species("Parus_major") == ("Parus_major",)
    assert folder_species("Turdus_merula,Parus_major") == ("Parus_major", "Turdus_merula")  # class order
    assert folder_species(" Parus_major , Turdus_merula,Parus_major") == ("Parus_major", "Turdus_merula")
    for name in ("noise", "Noise", "BACKGROUND", "Other", "silence"):
        assert folder_species(name) == ()
    assert folder_species("Noise", ["wind"]) == ("Noise",)  # only the names configured
    assert folder_species("WIND", ["wind"]) == ()
    for bad in ("Parus_major,", "Parus_major,,Turdus_merula", ",Parus_major"):
        with pytest.raises(LabelError, match="empty species name"):
            folder_species(bad)
    with pytest.raises(LabelError, match="names the background 'noise' among species"):
        folder_species("Parus_major,noise")


def test_the_schema_default_is_the_code_default() -> None:
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    assert tuple(schema["properties"]["labels"]["properties"]["background"]["default"]) == DEFAULT_BACKGROUND
    assert tuple(yaml.safe_load((REPO / "config.yaml").read_text())["labels"]["background"]) == DEFAULT_BACKGROUND


def mixed_qc() -> pd.DataFrame:
    """A_a: 3 recordings of 2 slices; B_b: 2 of 1; 'B_b,C_c': 2 recordings, one of 2 slices; Noise: 4 of 1.
    Every file 10 s."""
    return qc_rows({
        "A_a": [f"A_a-{r}_{k}.wav" for r in range(3) for k in (1, 2)],
        "B_b": ["B_b-0_1.wav", "B_b-1_1.wav"],
        "B_b,C_c": ["m-0_1.wav", "m-0_2.wav", "m-1_1.wav"],
        "Noise": [f"n-{r}_1.wav" for r in range(4)],
    })


def test_background_is_never_a_class_and_multi_species_files_count_for_each_species() -> None:
    qc = mixed_qc()
    index = label_index(qc, sorted(set(qc["label"])))
    # C_c has no folder of its own and is still a class; Noise is none.
    assert index["label"].tolist() == ["A_a", "B_b", "C_c"] and index["class_id"].tolist() == [0, 1, 2]
    # B_b: 2 own files (2 recordings) + 3 multi-species files (2 recordings); C_c: the 3 multi-species ones.
    assert index["n_files"].tolist() == [6, 5, 3]
    assert index["n_recordings"].tolist() == [3, 4, 2]
    assert index["seconds"].tolist() == [60.0, 50.0, 30.0]
    # With the background list emptied, Noise is an ordinary species.
    assert "Noise" in label_index(qc, sorted(set(qc["label"])), background=[])["label"].tolist()


def test_a_species_without_usable_audio_is_named_a_background_folder_only_warned() -> None:
    qc = mixed_qc()
    qc.loc[qc["label"] == "B_b,C_c", ["status", "reason"]] = ["rejected", "empty"]
    # C_c's only folder is unusable: the labels step stops naming C_c and that folder's reasons.
    with pytest.raises(LabelError, match=r"no usable audio for species 'C_c' \(empty: 3 files\)"):
        label_index(qc, sorted(set(qc["label"])))
    qc = mixed_qc()
    qc.loc[qc["label"] == "Noise", ["status", "reason"]] = ["rejected", "silent"]
    logged: list[str] = []
    index = label_index(qc, sorted(set(qc["label"])), log=logged.append)
    assert index["label"].tolist() == ["A_a", "B_b", "C_c"]
    assert logged == ["warning: background folder 'Noise' has no usable audio (silent: 4 files); "
                      "training goes on without it"]


def per_folder(split: pd.DataFrame) -> dict[str, dict[str, int]]:
    table = split.groupby(["label", "split"])["recording_id"].nunique().unstack(fill_value=0)
    return {label: {name: int(row.get(name, 0)) for name in SPLITS} for label, row in table.iterrows()}


def test_split_gives_background_and_multi_species_folders_their_own_strata() -> None:
    qc = qc_rows({
        "A_a": [f"A_a-{r}_1.wav" for r in range(10)],
        "B_b": [f"B_b-{r}_1.wav" for r in range(10)],
        "B_b,C_c": [f"m-{r}_1.wav" for r in range(5)],
        "noise": [f"n-{r}_{k}.wav" for r in range(10) for k in (1, 2)],
    })
    logged: list[str] = []
    split = assign_splits(qc, FRACTIONS, seed=3, log=logged.append)
    assert list(split.columns) == ["path", "label", "recording_id", "split", "species"]
    species = dict(zip(split["label"], split["species"]))
    assert species == {"A_a": "A_a", "B_b": "B_b", "B_b,C_c": "B_b,C_c", "noise": ""}
    counts = per_folder(split)
    # Each folder is split by its own shares: 10 recordings 6/2/2, the 5 multi-species ones 3/1/1.
    assert counts["noise"] == counts["A_a"] == counts["B_b"] == {"train": 6, "val": 2, "test": 2}
    assert counts["B_b,C_c"] == {"train": 3, "val": 1, "test": 1}
    assert split.groupby("recording_id")["split"].nunique().max() == 1  # slices of noise stay together
    assert logged == []
    # Too few recordings: the line speaks of folders once they are not all single species.
    few = assign_splits(qc_rows({"A_a": ["a-1_1.wav"], "B_b,C_c": ["m-1_1.wav"], "Other": ["o-1_1.wav"]}),
                        FRACTIONS, seed=0, log=logged.append)
    assert set(few["split"]) == {"train"}
    assert logged == ["3 of 3 folders have fewer than 3 recordings, too few to be evaluated: "
                      "A_a (1), 'B_b,C_c' (1), Other (1)"]
    assert species_column(pd.Series(["Other", "x,y"]), ["other"]).tolist() == ["", "x,y"]


def test_workflow_on_background_and_multi_species_folders(tmp_path: Path) -> None:
    """labels.tsv, split.tsv, the QC table and the logs of the preparation stages, through Snakemake."""
    data = make_tree(tmp_path / "birds", {"Alpha_one": 3, "Beta_two": 3, "Noise": 3, "Beta_two,Gamma_three": 3})
    (data / "silence").mkdir()
    (data / "silence" / "notes.txt").write_text("nothing recorded yet")  # a background folder without audio
    write_wav(data / "Noise" / "short.wav", chirp(0.5, 22050), 22050)  # rejected: too short
    config = {"data_dir": data, "models": ["convlstm"], "convlstm": {"multi_label": True}}
    run_snakemake(tmp_path, *PREPARATION_TARGETS, config=config)
    results = tmp_path / "results"
    labels = pd.read_csv(results / "labels.tsv", sep="\t")
    assert labels["label"].tolist() == ["Alpha_one", "Beta_two", "Gamma_three"]
    assert labels["n_files"].tolist() == [6, 12, 6] and labels["n_recordings"].tolist() == [3, 6, 3]
    split = pd.read_csv(results / "split.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert list(split.columns) == ["path", "label", "recording_id", "split", "species"]
    by_folder = split.groupby("label")
    assert by_folder["species"].agg(set).to_dict() == {
        "Alpha_one": {"Alpha_one"}, "Beta_two": {"Beta_two"}, "Beta_two,Gamma_three": {"Beta_two,Gamma_three"},
        "Noise": {""}}
    assert by_folder["split"].agg(set).to_dict() == {folder: set(SPLITS) for folder in by_folder.groups}
    # The QC table accounts for every file found, background and multi-species ones included.
    qc = pd.read_csv(results / "qc" / "files.tsv", sep="\t", keep_default_na=False)
    found = sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file())
    assert sorted(qc["path"]) == found and len(found) == 6 * 4 + 2
    status = dict(zip(qc["path"], qc["reason"]))
    assert status["Noise/short.wav"] == "too_short" and status["silence/notes.txt"] == "not_audio"
    assert (qc["status"] == "processed").sum() == len(split) == 24
    assert (tmp_path / "logs/labels.log").read_text().splitlines() == [
        "labels: warning: background folder 'silence' has no usable audio (not_audio: 1 file); "
        "training goes on without it",
        f"labels: 3 classes from 24 usable files (6 in background folders, 6 in multi-species folders) "
        f"(see results/qc/files.tsv)"]
    log = (tmp_path / "logs/split.log").read_text().splitlines()
    assert "split: background files train 2, val 2, test 2 (folders Noise)" in log
    assert "split: multi-species files train 2, val 2, test 2 (folders 'Beta_two,Gamma_three')" in log


def test_a_multi_species_folder_with_a_softmax_model_is_one_config_line(tmp_path: Path) -> None:
    from test_config_errors import assert_stops_with_one_line

    data = make_tree(tmp_path / "birds", {"Alpha_one": 1, "Alpha_one,Beta_two": 1})
    for config, line in [
        ({"vggish": {"multi_label": False}},
         "config: vggish.multi_label: false, but data_dir folder Alpha_one,Beta_two names several species; "
         "set multi_label: true for every trained model"),
        ({"models": ["vggish", "convlstm"], "vggish": {"multi_label": True}, "convlstm": {"multi_label": False}},
         "config: convlstm.multi_label: false, but data_dir folder Alpha_one,Beta_two"),
    ]:
        result = run_snakemake(tmp_path, "--dry-run", config={"data_dir": data, **config}, check=False)
        assert_stops_with_one_line(result, line, tmp_path)
    # Sigmoid outputs for every model: the same tree is accepted, and a label map needs ids for the species
    # the folders name, not for the folder names.
    both = {"vggish": {"multi_label": True}, "convlstm": {"multi_label": True}}
    label_map = tmp_path / "bird_id_map.pickle"
    label_map.write_bytes(pickle.dumps({"Alpha_one": 3, "Beta_two": 5}))
    (data / "noise").mkdir()
    result = run_snakemake(tmp_path, "--dry-run", config={"data_dir": data, "label_map": label_map, **both},
                           check=False)
    assert result.returncode == 0, result.stderr
    label_map.write_bytes(pickle.dumps({"Alpha_one": 3}))
    result = run_snakemake(tmp_path, "--dry-run", config={"data_dir": data, "label_map": label_map, **both},
                           check=False)
    assert [line for line in result.stderr.splitlines() if line.startswith("config:")] == [
        f"config: label_map: {label_map} has no id for species Beta_two"]


@pytest.mark.parametrize("folders, line", [
    ({"Alpha_one": 1, "noise": 1}, "has only one species folder (Alpha_one); a classifier needs two or more"),
    ({"Alpha_one,": 1, "Beta_two": 1}, "data_dir: folder 'Alpha_one,': empty species name"),
])
def test_folder_name_problems_are_config_lines(tmp_path: Path, folders: dict[str, int], line: str) -> None:
    from test_config_errors import assert_stops_with_one_line

    data = make_tree(tmp_path / "birds", folders)
    result = run_snakemake(tmp_path, "--dry-run", config={"data_dir": data}, check=False)
    assert_stops_with_one_line(result, f"config: data_dir: {data} {line}" if line.startswith("has") else
                               f"config: {line}", tmp_path)


# --- metrics ---------------------------------------------------------------------------------------

CLASSES = ["a", "b", "c"]


@pytest.fixture
def mixed() -> tuple[np.ndarray, np.ndarray]:
    """Six files, truth: {a} {a} {b} {b,c} {} {} (two background files).

    Top-1: a b b b a c.
    Single-species files 0-2: top-1 right on 0 and 2 -> accuracy 2/3; confusion a->a, a->b, b->b.
    Top-1 figures count the files with a species (a forced answer on background has no right one):
    a: predicted on 0 -> P 1; support 2, found 1 -> R 1/2.
    b: predicted on 1 (an a file), 2, 3 -> TP 2 (file 3 contains b) -> P 2/3; support 2 -> R 1.
    c: never predicted -> P 0 (it has support); support 1 (file 3), never its top -> R 0.
    micro: 3 of 4 top-1 classes right (P 3/4), 3 of 5 true (file, class) pairs found (R 3/5).
    """
    truth = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 1], [0, 0, 0], [0, 0, 0]], bool)
    scores = np.array([
        [0.9, 0.1, 0.0],
        [0.4, 0.6, 0.0],
        [0.1, 0.8, 0.1],
        [0.1, 0.5, 0.4],
        [0.3, 0.2, 0.1],
        [0.1, 0.1, 0.5],
    ])
    return truth, scores


def test_metrics_count_background_and_multi_species_files(mixed) -> None:
    truth, scores = mixed
    m = metrics.classification_metrics(truth, scores, CLASSES, top_k=2)
    assert (m["n"], m["n_single_species"], m["n_background"], m["n_multi_species"]) == (6, 3, 2, 1)
    assert m["top1_accuracy"] == pytest.approx(2 / 3)
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    # Top-2 over the single-species files: file 1 has a second (0.4): all three.
    assert m["top2_accuracy"] == 1.0
    rows = {row["label"]: row for row in m["per_class"]}
    assert (rows["a"]["support"], rows["a"]["predicted"], rows["a"]["precision"], rows["a"]["recall"]) == (
        2, 1, 1.0, 0.5)
    assert (rows["b"]["support"], rows["b"]["predicted"], rows["b"]["recall"]) == (2, 3, 1.0)
    assert rows["b"]["precision"] == pytest.approx(2 / 3)
    assert (rows["c"]["support"], rows["c"]["predicted"], rows["c"]["precision"], rows["c"]["recall"]) == (
        1, 0, 0.0, 0.0)
    assert m["micro"]["precision"] == 0.75 and m["micro"]["recall"] == pytest.approx(0.6)
    # AP and ROC-AUC rank every file: c's positive (file 3, 0.4) is below one background file (0.5).
    # Ranked c scores: 0.5 (-) 0.4 (+) ... -> AP = precision 1/2 at recall 1; AUC: 4 of 5 negatives below.
    assert rows["c"]["average_precision"] == pytest.approx(0.5)
    assert rows["c"]["roc_auc"] == pytest.approx(4 / 5)
    # a: positives 0.9, 0.4; the background file's 0.3 is a negative below both: AP 1, AUC 1.
    assert (rows["a"]["average_precision"], rows["a"]["roc_auc"]) == (1.0, 1.0)
    # Without background and multi-species rows the figures are those of plain integer classes.
    plain = metrics.classification_metrics(np.array([0, 0, 1]), scores[:3], CLASSES)
    assert plain == {**metrics.classification_metrics(truth[:3], scores[:3], CLASSES)}
    assert plain["micro"]["f1"] == plain["top1_accuracy"]


def test_thresholds_see_background_as_negatives_and_multi_species_as_positives(mixed) -> None:
    truth, scores = mixed
    rows = {row["label"]: row for row in fitting.precision_thresholds(truth, scores, CLASSES, 1.0)}
    # a: ranked 0.9 (+) 0.4 (+) 0.3 (background) ...: 0.4 reaches precision 1 at recall 1; the threshold is the
    # middle of the gap down to 0.3 (log-odds), where the same files are detected.
    assert (rows["a"]["threshold"], rows["a"]["recall"]) == (pytest.approx(expit((logit(0.4) + logit(0.3)) / 2)), 1.0)
    # b: 0.8 (+) 0.6 (an a file): only 0.8 keeps precision 1 -> recall 1/2 (file 3's 0.5 is missed).
    assert (rows["b"]["threshold"], rows["b"]["recall"]) == (pytest.approx(expit((logit(0.8) + logit(0.6)) / 2)), 0.5)
    # c: the top c score (0.5) is background, the multi-species file's 0.4 next -> 1/2 at best: unreachable.
    assert rows["c"]["status"] == "unreachable"
    outcome = fitting.threshold_outcomes(truth, scores, np.array([0.4, 0.5, 0.45]), CLASSES, 0.9)
    by_label = {row["label"]: row for row in outcome["per_class"]}
    # a at 0.4: files 0, 1 -> P 1 R 1.  b at 0.5: files 1 (a file), 2, 3 -> P 2/3, R 1.  c at 0.45: file 5 -> P 0.
    assert (by_label["a"]["detections"], by_label["a"]["precision"], by_label["a"]["recall"]) == (2, 1.0, 1.0)
    assert (by_label["b"]["detections"], by_label["b"]["recall"]) == (3, 1.0)
    assert by_label["b"]["precision"] == pytest.approx(2 / 3)
    assert (by_label["c"]["detections"], by_label["c"]["precision"], by_label["c"]["recall"]) == (1, 0.0, 0.0)
    # The background files 4 and 5 at those thresholds: file 5 detects c (0.5 >= 0.45), file 4 nothing.
    summary = fitting.no_species(scores[4:], np.array([0.4, 0.5, 0.45]))
    assert summary == {"n": 2, "no_species_rate": 0.5, "mean_top_score": pytest.approx(0.4)}
    # A class without a threshold (NaN) never detects: both background files say "no species".
    assert fitting.no_species(scores[4:], np.array([0.4, 0.5, math.nan]))["no_species_rate"] == 1.0
    assert fitting.no_species(np.zeros((0, 3)), np.zeros(3)) == {"n": 0, "no_species_rate": None,
                                                                  "mean_top_score": None}


def test_softmax_temperature_takes_background_as_uniform() -> None:
    """Background files alone: the likelihood of a uniform target is highest where the scores are flattest."""
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    owner = np.arange(2)
    background = np.zeros((2, 3), bool)
    # (The likelihood flattens out near the bounds: the search stops close to them, not on them.)
    assert metrics.fit_temperature(logits, owner, background) > 0.8 * metrics.TEMPERATURE_BOUNDS[1]
    # With sigmoid outputs the target is all-zero: negative logits sharpened (the lowest T) score 0 the best.
    assert metrics.fit_temperature(-logits, owner, background, multi_label=True) < 2 * metrics.TEMPERATURE_BOUNDS[0]
    # One a file among them pulls the softmax fit away from the bound: its top class must stay likely.
    assert metrics.fit_temperature(logits, owner, np.array([[1, 0, 0], [0, 0, 0]], bool)) < 10


# --- evaluation end to end, with a model whose scores are known --------------------------------------

def test_evaluation_with_background_and_multi_species_test_files(tmp_path: Path, capsys) -> None:
    """A sigmoid model whose logit for class k is the mean of log-mel band k: a file with band k at +4 scores
    sigmoid(4) = 0.982 for k, the others sigmoid(-4) = 0.018.

    val:  a {a}, b {b}, m {b,c}, n {}          -> every raw threshold at 0.982 (precision 1).
    test: a {a}, b {b}, m {b,c}, n1 {} (all low), n2 {} (band a high: a false a).
    On test: no species on n1 only -> rate 1/2, mean top score (0.018 + 0.982) / 2 = 0.5; a detects the a file
    and n2 -> test precision 1/2; top-1 over the single-species files a, b -> 1; confusion 2 files.
    """
    keras = pytest.importorskip("keras")

    inputs = keras.Input((96, 64), name="patches")
    dense = keras.layers.Dense(3, name="logits")
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling1D()(inputs)))
    weights = np.zeros((64, 3), np.float32)
    weights[[0, 1, 2], [0, 1, 2]] = 1.0
    dense.set_weights([weights, np.zeros(3, np.float32)])
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    model.save(model_dir / "model.keras")
    # The RunSettings of a sigmoid model; every window takes its file's label (the log-mel is stationary: no
    # call activity to find).
    settings = {"model": "vggish", "vggish": {"multi_label": True}, "train": {"call_windows": "all"}}
    (model_dir / "train.json").write_text(json.dumps({"model": "bands", "settings": settings, "epochs_completed": 1}))
    (model_dir / "history.tsv").write_text("epoch\tloss\taccuracy\tval_loss\tval_accuracy\n1\t1.0\t0.5\t1.0\t0.5\n")
    pd.DataFrame({"class_id": [0, 1, 2], "label": CLASSES}).to_csv(tmp_path / "labels.tsv", sep="\t", index=False)
    files = [("val", "a", "a", [0]), ("val", "b", "b", [1]), ("val", "b,c", "b,c", [1, 2]), ("val", "noise", "", []),
             ("test", "a", "a", [0]), ("test", "b", "b", [1]), ("test", "b,c", "b,c", [1, 2]),
             ("test", "noise", "", []), ("test", "noise", "", [0]), ("train", "a", "a", [0])]
    rows = []
    for i, (split, folder, species, high) in enumerate(files):
        log_mel = np.full((96, 64), -4.0, np.float32)
        log_mel[:, high] = 4.0
        path = f"{folder}/f{i}.wav"
        (tmp_path / "features" / folder).mkdir(parents=True, exist_ok=True)
        np.savez(tmp_path / "features" / folder / f"f{i}.npz", log_mel=log_mel)
        rows.append({"path": path, "label": folder, "recording_id": f"f{i}", "split": split, "species": species})
    pd.DataFrame(rows).to_csv(tmp_path / "split.tsv", sep="\t", index=False)

    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--model-dir", str(model_dir), "--labels", str(tmp_path / "labels.tsv"),
                     "--split", str(tmp_path / "split.tsv"), "--features-dir", str(tmp_path / "features"),
                     "--out-dir", str(out), "--target-precision", "0.9"]) == 0
    summary = capsys.readouterr().err.splitlines()[-1]
    assert summary.startswith("evaluate bands: 5 test files, file top-1 1.000"), summary
    assert "no species on 0.500 of 2 background files" in summary
    report = json.loads((out / "metrics.json").read_text())
    assert (report["n_files"], report["n_background_files"], report["n_multi_species_files"]) == (5, 2, 1)
    background = report["background"]
    assert background["n_files"] == 2 and background["raw"]["no_species_rate"] == 0.5
    assert background["raw"]["mean_top_score"] == pytest.approx(0.5, abs=1e-6)
    assert background["window"] == {**background["raw"], "n": 2}  # one patch per file: windows are the files
    f = report["file"]
    assert (f["n_single_species"], f["top1_accuracy"]) == (2, 1.0)
    assert np.array(f["confusion"]).sum() == 2
    per_class = {row["label"]: row for row in f["per_class"]}
    assert (per_class["b"]["support"], per_class["c"]["support"]) == (2, 1)
    thresholds = pd.read_csv(out / "thresholds.tsv", sep="\t").set_index("label")
    # One or two val files each, under evaluate.min_threshold_support (3): every species takes the pooled
    # threshold, the lowest positive score of any species above the background's (sigmoid(4)), moved to the
    # middle of its gap down to the highest other score (sigmoid(-4)) in log-odds: 0.5; flagged.
    assert thresholds["threshold"].to_numpy() == pytest.approx([0.5] * 3)
    assert set(thresholds["status"]) == {"fallback"} and report["thresholds"]["raw"]["classes_with_fallback"] == 3
    assert thresholds.loc["a", "test_detections"] == 2 and thresholds.loc["a", "test_precision"] == 0.5
    assert (thresholds.loc["c", "support"], thresholds.loc["c", "test_recall"]) == (1, 1.0)
    scores = pd.read_csv(out / "file_scores.tsv", sep="\t", keep_default_na=False)
    assert list(scores.columns[:4]) == ["path", "label", "species", "predicted"]
    assert scores["species"].tolist() == ["a", "b,c", "b", "", ""]  # by path: "b,c/" sorts before "b/"
    text = (out / "report.md").read_text()
    assert "2 are background (a negative for every species) and 1 hold several species" in text
    assert "No species (background test files on which no species reaches its val threshold): 0.500 with raw" in text
    assert all((out / name).stat().st_size > 0 for name in ("confusion.png", "reliability.png", "metrics.json"))


# --- predict and analyze ---------------------------------------------------------------------------

def test_predict_says_no_species_where_nothing_reaches_its_threshold(tmp_path: Path) -> None:
    from test_predict import LABELS, FakeExport

    results = predict.predict_files(FakeExport(), ["noise.wav", "bad.wav"], top_k=2,
                                    thresholds=np.full(len(LABELS), 0.9))
    quiet, failed = results
    assert quiet.detected == [] and quiet.no_species is True and failed.no_species is None
    assert quiet.as_dict()["no_species"] is True and "no_species" not in failed.as_dict()
    table = pd.read_csv(io.StringIO(predict.to_tsv(results)), sep="\t")
    assert table.columns[-1] == "no_species" and table["no_species"].tolist() == [True, True]
    assert table["detected"].tolist() == [False, False]  # the top two stay listed, none detected
    thresholds = np.full(len(LABELS), 0.9)
    thresholds[1] = 0.2  # b scores 0.20 raw: detected exactly at its threshold, below the top 1
    [heard] = predict.predict_files(FakeExport(), ["song.wav"], top_k=1, thresholds=thresholds)
    assert heard.detected == ["b"] and heard.no_species is False
    assert pd.read_csv(io.StringIO(predict.to_tsv([heard])), sep="\t")["no_species"].tolist() == [False, False]
    # Without thresholds there is no decision, and no column for it.
    [plain] = predict.predict_files(FakeExport(), ["song.wav"], top_k=1)
    assert plain.no_species is None and "no_species" not in predict.to_tsv([plain])


def test_analyze_files_table_counts_zero_detections(tmp_path: Path) -> None:
    from test_analyze import soundscape, write_tone_export

    from conftest import write_audio

    export = write_tone_export(tmp_path / "export" / "1", None, [math.nan, 0.5])
    audio = tmp_path / "in"
    write_audio(audio / "quiet.wav", soundscape(5.0, 16000, []), 16000, "WAV")
    write_audio(audio / "call.wav", soundscape(5.0, 16000, [(1.0, 3.0)]), 16000, "WAV")
    out = tmp_path / "out"
    assert cli.main(["analyze", "--model", str(export), "--out", str(out), str(audio)]) == 0
    files = pd.read_csv(out / "files.tsv", sep="\t", keep_default_na=False).set_index("file")
    assert files.loc["quiet.wav", "detections"] == 0 and files.loc["call.wav", "detections"] > 0
    assert (out / "quiet.jibjib.selections.txt").read_text().count("\n") == 1  # the header only
    assert set(pd.read_csv(out / "detections.tsv", sep="\t")["file"]) == {"call.wav"}
