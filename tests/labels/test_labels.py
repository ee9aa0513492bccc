"""Label index, the stratified split by recording and its ledger, the QC table and the safe label-map reader."""

from __future__ import annotations

import hashlib
import pickle
import random
from pathlib import Path

import pandas as pd
import pytest

from conftest import WritesFile, make_tree, run_snakemake
from jibjib import cli
from jibjib.core.errors import LabelError
from jibjib.labels.index import label_index, recording_ids
from jibjib.labels.label_map import load_label_map
from jibjib.labels.ledger import LEDGER_COLUMNS, read_ledger, split_settings, write_ledger
from jibjib.labels.split import SPLITS, assign_splits, next_split
from jibjib.features.qc import QC_COLUMNS, QCRow, read_qc, with_duplicates, write_manifest


def qc_rows(files: dict[str, list[str]], seconds: float = 10.0) -> pd.DataFrame:
    """Processed rows; each file's sha256 is its path's, so content is unique unless a test says otherwise."""
    rows = [
        {"path": f"{label}/{name}", "label": label, "status": "processed", "reason": "", "detail": "",
         "sample_rate": 44100, "channels": 1, "seconds": seconds, "frames": 998, "feature": "",
         "sha256": hashlib.sha256(f"{label}/{name}".encode()).hexdigest()}
        for label, names in files.items() for name in names
    ]
    return pd.DataFrame(rows)


def corpus(n_recordings: int, labels=("Parus_major", "Turdus_merula", "Erithacus_rubecula")) -> pd.DataFrame:
    return qc_rows({label: [f"{label}-{r}_{k}.wav" for r in range(n_recordings) for k in (1, 2, 3)]
                    for label in labels})


def test_recording_ids_strip_the_slice_number() -> None:
    paths = pd.Series(["T/Turdus_merula-12345_3.wav", "T/Turdus_merula-12345.wav", "T/a_b_c_10.wav"])
    assert list(recording_ids(paths)) == ["Turdus_merula-12345", "Turdus_merula-12345", "a_b_c"]
    assert list(recording_ids(paths, r"^(?P<recording>[^-]+)")) == ["Turdus_merula"] * 2 + ["a_b_c_10"]


def test_class_ids_follow_sorted_labels_whatever_the_input_order() -> None:
    qc = corpus(4)
    species = ["Turdus_merula", "Erithacus_rubecula", "Parus_major"]
    shuffled = label_index(qc.sample(frac=1, random_state=1), species)
    again = label_index(qc, list(reversed(species)))
    pd.testing.assert_frame_equal(shuffled, again)
    assert list(shuffled["label"]) == sorted(species)
    assert list(shuffled["class_id"]) == [0, 1, 2]
    assert list(shuffled.columns) == ["class_id", "label", "n_files", "n_recordings", "seconds"]
    assert list(shuffled["n_recordings"]) == [4, 4, 4] and list(shuffled["n_files"]) == [12, 12, 12]
    assert list(shuffled["seconds"]) == [120.0] * 3


def test_species_without_usable_files_is_named() -> None:
    qc = corpus(2)
    qc.loc[qc["label"] == "Parus_major", "status"] = "rejected"
    with pytest.raises(LabelError, match="Parus_major"):
        label_index(qc, ["Parus_major", "Turdus_merula", "Erithacus_rubecula"])


def test_label_map_becomes_external_id() -> None:
    index = label_index(corpus(1), ["Parus_major", "Turdus_merula", "Erithacus_rubecula"],
                        {"Parus_major": 7, "Turdus_merula": 3, "Erithacus_rubecula": 190})
    assert list(index["external_id"]) == [190, 7, 3]


FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
DEFAULT = {"train": 0.7, "val": 0.15, "test": 0.15}


def test_slices_of_a_recording_never_straddle_splits() -> None:
    split = assign_splits(corpus(40), FRACTIONS, seed=1)
    assert split.groupby(["label", "recording_id"])["split"].nunique().max() == 1
    shares = split.groupby("split")["recording_id"].nunique() / (40 * 3)
    for name, fraction in FRACTIONS.items():
        assert abs(shares[name] - fraction) < 0.1
    assert list(split.columns) == ["path", "label", "recording_id", "split", "species"]
    assert (split["species"] == split["label"]).all()  # one species per folder here


def ledger_of(split: pd.DataFrame) -> dict[str, str]:
    return dict(zip(split["recording_id"], split["split"]))


def test_adding_files_never_moves_a_recording() -> None:
    before = assign_splits(corpus(30), FRACTIONS, seed=7)
    grown = pd.concat([corpus(60), qc_rows({"Sylvia_atricapilla": ["Sylvia_atricapilla-1_1.wav"]})])
    after = assign_splits(grown.sample(frac=1, random_state=3), FRACTIONS, seed=7, ledger=ledger_of(before))
    merged = before.merge(after, on="path", suffixes=("_before", "_after"))
    assert len(merged) == len(before)
    assert (merged["split_before"] == merged["split_after"]).all()
    assert not before.equals(assign_splits(corpus(30), FRACTIONS, seed=8))


def assert_stratified(counts: dict[str, int], fractions: dict[str, float], min_eval: int, where: str = "") -> None:
    """Train always, val and test from min_eval recordings on, and each split within one recording of its
    share, except that a minimum may raise a split above it, taking those recordings from the others."""
    n = sum(counts.values())
    required = {"train": 1, **{name: int(fractions[name] > 0 and n >= min_eval) for name in ("val", "test")}}
    taken = sum(max(0.0, required[name] - fractions[name] * n) for name in SPLITS)
    for name in SPLITS:
        share = fractions[name] * n
        assert counts[name] >= required[name], (where, name, counts)
        assert counts[name] <= max(share, required[name]) + 1 + 1e-9, (where, name, counts)
        assert counts[name] >= share - 1 - taken - 1e-9, (where, name, counts)


FRACTION_SETS = [
    {"train": t, "val": v, "test": round(1 - t - v, 10)}
    for t in (0.5, 0.6, 0.7, 0.8, 0.9, 0.98) for v in (0.0, 0.01, 0.05, 0.1, 0.15, 0.25) if t + v <= 1 + 1e-9
] + [{"train": 1.0, "val": 0.0, "test": 0.0}, {"train": 0.34, "val": 0.33, "test": 0.33},
      {"train": 0.2, "val": 0.4, "test": 0.4}, {"train": 0.1, "val": 0.0, "test": 0.9}]


@pytest.mark.parametrize("fractions", FRACTION_SETS, ids=lambda f: "-".join(f"{v:g}" for v in f.values()))
def test_next_split_keeps_minimums_and_shares_at_every_n(fractions: dict[str, float]) -> None:
    """The rule, one recording at a time: counts only ever grow, so no recording moves; at every n
    the minimums hold and every share is within one recording beyond them."""
    evaluated = sum(fractions[name] > 0 for name in ("val", "test"))
    for min_eval in range(max(2, 1 + evaluated), 8):
        for order in (SPLITS, ("train", "test", "val")):
            counts = dict.fromkeys(SPLITS, 0)
            for n in range(1, 301):
                counts[next_split(counts, fractions, min_eval, order)[1]] += 1
                assert_stratified(counts, fractions, min_eval, f"min_eval {min_eval}, n {n}, {order}")


def long_tail(rng: random.Random, extra: int = 0, sizes: list[int] | None = None) -> pd.DataFrame:
    """30 species with 1-6 recordings (two slices each), plus `extra` more per species."""
    sizes = sizes or [rng.randint(1, 6) for _ in range(30)]
    return qc_rows({f"Species_{i:02d}": [f"Species_{i:02d}-{r}_{k}.wav" for r in range(size + extra) for k in (1, 2)]
                    for i, size in enumerate(sizes)})


def per_species(split: pd.DataFrame) -> dict[str, dict[str, int]]:
    table = split.groupby(["label", "split"])["recording_id"].nunique().unstack(fill_value=0)
    return {label: {name: int(row.get(name, 0)) for name in SPLITS} for label, row in table.iterrows()}


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_long_tail_trains_every_species_and_growing_moves_nothing(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    sizes = [1, 2, 3, 4, 5, 6] + [rng.randint(1, 6) for _ in range(24)]
    settings = split_settings(DEFAULT, seed, 3)
    ledger = tmp_path / "split_ledger.tsv"
    logged: list[str] = []

    before = assign_splits(long_tail(rng, sizes=sizes), DEFAULT, seed, ledger=read_ledger(ledger, settings)[0],
                           log=logged.append)
    counts = per_species(before)
    assert len(counts) == 30
    for label, c in counts.items():
        assert_stratified(c, DEFAULT, 3, label)
    few = sorted(f"Species_{i:02d} ({n})" for i, n in enumerate(sizes) if n < 3)
    assert logged == [f"{len(few)} of 30 species have fewer than 3 recordings, too few to be evaluated: "
                      + ", ".join(few)]

    write_ledger(ledger, before, settings)
    grown = long_tail(rng, extra=1, sizes=sizes).sample(frac=1, random_state=seed)
    reused, note = read_ledger(ledger, settings)
    assert note == f"ledger {ledger}: reused for {sum(sizes)} recordings"
    after = assign_splits(grown, DEFAULT, seed, ledger=reused)
    merged = before.merge(after, on="path", suffixes=("_before", "_after"))
    assert len(merged) == len(before) and (merged["split_before"] == merged["split_after"]).all()
    assert len(after) == len(before) + 2 * 30
    for label, c in per_species(after).items():
        assert_stratified(c, DEFAULT, 3, label)


def test_from_scratch_the_split_ignores_row_order() -> None:
    qc = long_tail(random.Random(5))
    first = assign_splits(qc, DEFAULT, seed=3)
    for state in (1, 2, 3):
        pd.testing.assert_frame_equal(assign_splits(qc.sample(frac=1, random_state=state), DEFAULT, seed=3), first)


def test_one_recording_id_in_two_species_folders_is_one_unit() -> None:
    """The same recording under two species folders: one split, chosen for the species that needs it most."""
    shared = [f"shared-{r}_1.wav" for r in range(20)]
    qc = qc_rows({"Alpha_one": shared, "Beta_two": shared + [f"Beta_two-{r}_1.wav" for r in range(10)],
                  "Gamma_three": ["shared-0_1.wav"]})
    logged: list[str] = []
    split = assign_splits(qc, DEFAULT, seed=1, log=logged.append)
    assert split.groupby("recording_id")["split"].nunique().max() == 1
    # Gamma_three's only recording is shared with two big species, and still trains Gamma_three.
    assert list(split.loc[split["label"] == "Gamma_three", "split"]) == ["train"]
    for label, c in per_species(split).items():
        assert_stratified(c, DEFAULT, 3, label)
    assert "kept together in train: shared-0 (in Alpha_one, Beta_two, Gamma_three)" in logged


def test_identical_files_pull_their_recordings_into_one_split() -> None:
    qc = corpus(14)
    # A slice of each of 20 recordings copied into a recording of another species: 20 groups of two.
    pairs = [(i, i + 20) for i in range(20)]
    for a, b in pairs:
        qc.loc[qc.index[3 * b], "sha256"] = qc.loc[qc.index[3 * a], "sha256"]
    split = assign_splits(qc, FRACTIONS, seed=2).set_index("path")
    by_recording = split.groupby("recording_id")["split"].first()
    for a, b in pairs:
        ids = split.loc[[qc.loc[qc.index[3 * a], "path"], qc.loc[qc.index[3 * b], "path"]], "recording_id"]
        assert by_recording[ids.iloc[0]] == by_recording[ids.iloc[1]], ids.tolist()


def test_a_new_duplicate_joining_two_splits_sends_the_group_to_train() -> None:
    qc = corpus(6)
    before = assign_splits(qc, FRACTIONS, seed=4)
    val, test = (before[before["split"] == name].iloc[0] for name in ("val", "test"))
    copy = qc_rows({val["label"]: ["copy.wav"]})
    copy["sha256"] = qc.loc[qc["path"] == val["path"], "sha256"].iloc[0]
    qc.loc[qc["path"] == test["path"], "sha256"] = copy["sha256"].iloc[0]  # and the test file turns out identical
    logged: list[str] = []
    after = assign_splits(pd.concat([qc, copy]), FRACTIONS, seed=4, ledger=ledger_of(before), log=logged.append)
    moved = sorted({val["recording_id"], test["recording_id"]})
    group = after[after["recording_id"].isin(moved + ["copy"])]
    assert set(group["split"]) == {"train"}
    assert f"warning: {', '.join(sorted(moved + ['copy']))} have identical files but the ledger had them in " \
           "val and test: all go to train" in logged
    for label, c in per_species(after).items():
        assert c["val"] and c["test"], (label, c)


def test_removed_recordings_leave_no_species_without_train() -> None:
    before = assign_splits(corpus(3), DEFAULT, seed=0)
    trained = before.loc[before["split"] == "train", "recording_id"].unique()
    qc = corpus(3)
    kept = qc[~recording_ids(qc["path"]).isin(trained)]
    logged: list[str] = []
    after = assign_splits(kept, DEFAULT, seed=0, ledger=ledger_of(before), log=logged.append)
    assert set(per_species(after)) == set(per_species(before))
    assert all(c["train"] == 1 for c in per_species(after).values())
    assert sum(line.startswith("warning: moved ") for line in logged) == 3


def test_min_eval_recordings_must_leave_room_for_train() -> None:
    with pytest.raises(LabelError, match=r"min_eval_recordings must be at least 3 \(one train recording and one "
                                         r"val and one test\), got 2"):
        assign_splits(corpus(3), DEFAULT, seed=0, min_eval_recordings=2)
    split = assign_splits(corpus(2), {"train": 0.8, "val": 0.2, "test": 0.0}, seed=0, min_eval_recordings=2)
    assert all(c == {"train": 1, "val": 1, "test": 0} for c in per_species(split).values())


def manifest_of(tmp_path: Path, qc: pd.DataFrame) -> Path:
    path = tmp_path / "manifest.tsv"
    write_manifest(path, [QCRow(**{c: (None if pd.isna(v) else v) for c, v in row.items()})
                          for row in qc[QC_COLUMNS].to_dict("records")])
    return path


def test_cli_split_keeps_its_ledger_and_ignores_one_of_other_settings(tmp_path: Path, capsys) -> None:
    manifest = manifest_of(tmp_path, long_tail(random.Random(1)))
    ledger, out = tmp_path / "results" / "split_ledger.tsv", tmp_path / "results" / "split.tsv"

    def split(*options: str) -> tuple[pd.DataFrame, list[str]]:
        assert cli.main(["split", "--manifests", str(manifest), f"--out={out}", f"--ledger={ledger}", *options]) == 0
        return pd.read_csv(out, sep="\t"), capsys.readouterr().err.splitlines()

    first, log = split()
    assert log[0] == f"split: no ledger {ledger} yet: split from scratch"
    assert log[-1].startswith("split: recordings train ")
    table = pd.read_csv(ledger, sep="\t", dtype=str)
    assert list(table.columns) == LEDGER_COLUMNS == ["recording_id", "split", "settings"]
    assert dict(zip(table["recording_id"], table["split"])) == ledger_of(first)
    assert set(table["settings"]) == {split_settings(DEFAULT, 42, 3)}

    # An edited ledger of the same settings is obeyed: that is what keeps old assignments.
    biggest = first.groupby("label")["recording_id"].nunique().idxmax()
    edited = first.loc[(first["label"] == biggest) & (first["split"] == "train"), "recording_id"].iloc[0]
    table.loc[table["recording_id"] == edited, "split"] = "test"
    table.to_csv(ledger, sep="\t", index=False)
    again, log = split()
    assert log[0] == f"split: ledger {ledger}: reused for {len(table)} recordings"
    assert set(again.loc[again["recording_id"] == edited, "split"]) == {"test"}

    other, log = split("--seed=7")
    assert log[0] == (f"split: ledger {ledger} ignored: written under other split settings (seed, fractions, "
                      "min_eval_recordings or recording_pattern); split from scratch")
    assert list(other["split"]) == list(assign_splits(read_qc([manifest]), DEFAULT, 7)["split"])
    assert set(pd.read_csv(ledger, sep="\t", dtype=str)["settings"]) == {split_settings(DEFAULT, 7, 3)}

    assert cli.main(["split", "--manifests", str(manifest), f"--out={out}", "--min-eval-recordings=2"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "jibjib split: error: min_eval_recordings must be at least 3 (one train recording and one val and one test), "
        "got 2"]


def test_qc_table_lists_identical_files(tmp_path: Path) -> None:
    qc = qc_rows({"Alpha_one": ["a_1.wav", "b_1.wav", "c_1.wav"], "Beta_two": ["a_1.wav", "d_1.wav"]})
    same = qc.loc[qc["path"] == "Beta_two/a_1.wav", "sha256"].iloc[0]
    qc.loc[qc["path"].isin(["Alpha_one/c_1.wav", "Alpha_one/b_1.wav"]), "sha256"] = same
    qc.loc[qc["path"] == "Beta_two/d_1.wav", "sha256"] = ""  # unreadable: no content to compare
    manifest = manifest_of(tmp_path, qc)
    (tmp_path / "birds" / "Alpha_one").mkdir(parents=True)
    out = tmp_path / "qc" / "files.tsv"
    assert cli.main(["qc", "--data-dir", str(tmp_path / "birds"), "--manifests", str(manifest), f"--out={out}"]) == 0
    table = pd.read_csv(out, sep="\t", dtype=str, keep_default_na=False)
    assert list(table.columns) == QC_COLUMNS + ["duplicate_of"]
    assert dict(zip(table["path"], table["duplicate_of"])) == {
        "Alpha_one/a_1.wav": "", "Alpha_one/b_1.wav": "", "Alpha_one/c_1.wav": "Alpha_one/b_1.wav",
        "Beta_two/a_1.wav": "Alpha_one/b_1.wav", "Beta_two/d_1.wav": ""}
    assert list(pd.read_csv(manifest, sep="\t").columns) == QC_COLUMNS  # the manifests keep their columns
    pd.testing.assert_frame_equal(read_qc([out]), read_qc([manifest]))  # and the table reads like one
    assert list(with_duplicates(qc.iloc[:0])["duplicate_of"]) == []


def test_qc_table_survives_a_failing_labels_job(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "birds", {"Alpha_one": 1, "Beta_two": 1})
    for wav in (data / "Beta_two").iterdir():
        wav.write_bytes(b"")
    result = run_snakemake(tmp_path, "results/labels.tsv", config={"data_dir": data}, check=False)
    assert result.returncode != 0 and not (tmp_path / "results/labels.tsv").exists()
    qc = read_qc([tmp_path / "results/qc/files.tsv"])
    assert dict(zip(qc["path"], qc["reason"])) == {
        "Alpha_one/Alpha_one-100_1.wav": "", "Alpha_one/Alpha_one-100_2.wav": "",
        "Beta_two/Beta_two-100_1.wav": "empty", "Beta_two/Beta_two-100_2.wav": "empty"}


def test_workflow_refuses_min_eval_recordings_without_room_for_train(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "birds", {"Alpha_one": 1, "Beta_two": 1})
    result = run_snakemake(tmp_path, "--dry-run", config={"data_dir": data, "split": {"min_eval_recordings": 2}},
                           check=False)
    assert result.returncode != 0
    assert [line for line in result.stderr.splitlines() if line.startswith("config:")] == [
        "config: split.min_eval_recordings: must be at least 3 (one train recording and one val and one test), got 2"]


def test_hostile_label_map_is_refused_without_running(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    hostile = tmp_path / "bird_id_map.pickle"
    hostile.write_bytes(pickle.dumps({"Parus_major": WritesFile(target)}))
    with pytest.raises(LabelError, match="refused"):
        load_label_map(hostile)
    assert not target.exists()


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_plain_label_map_loads(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "bird_id_map.pickle"
    path.write_bytes(pickle.dumps({"Parus_major": 0, "Turdus_merula": 193}, protocol=protocol))
    assert load_label_map(path) == {"Parus_major": 0, "Turdus_merula": 193}


def test_label_map_of_the_wrong_shape(tmp_path: Path) -> None:
    path = tmp_path / "m.pickle"
    path.write_bytes(pickle.dumps({"Parus_major": "zero"}))
    with pytest.raises(LabelError, match="dict of species name"):
        load_label_map(path)
    with pytest.raises(LabelError, match="does not exist"):
        load_label_map(tmp_path / "missing.pickle")


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_that_would_write_a_file_is_refused_at_every_protocol(tmp_path: Path, protocol: int) -> None:
    target = tmp_path / "pwned"
    payload = pickle.dumps({"Turdus_merula": 3, "Parus_major": WritesFile(target)}, protocol=protocol)
    # The payload is real: an ordinary unpickler creates the file.
    pickle.loads(payload)["Parus_major"].close()
    assert target.exists()
    target.unlink()

    hostile = tmp_path / "bird_id_map.pickle"
    hostile.write_bytes(payload)
    with pytest.raises(LabelError, match=r"bird_id_map\.pickle refused: the pickle asks for \w+\.open, "
                                         r"only plain data is accepted"):
        load_label_map(hostile)
    assert not target.exists()


@pytest.mark.parametrize("payload", [
    # What Python 2 wrote for {'Parus_major': 0, 'Turdus_merula': 193} (byte strings as keys).
    b"\x80\x02}q\x00(U\x0bParus_majorq\x01K\x00U\x0dTurdus_merulaq\x02K\xc1u.",
    b"(dp0\nS'Parus_major'\np1\nI0\nsS'Turdus_merula'\np2\nI193\ns.",
])
def test_label_map_written_by_python_2_loads(tmp_path: Path, payload: bytes) -> None:
    """The original bird_id_map.pickle came from Python 2 code."""
    path = tmp_path / "bird_id_map.pickle"
    path.write_bytes(payload)
    assert load_label_map(path) == {"Parus_major": 0, "Turdus_merula": 193}
