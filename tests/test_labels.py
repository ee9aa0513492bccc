"""Label index, split by recording, QC table helpers and the safe label-map reader."""

from __future__ import annotations

import pickle
from pathlib import Path

import pandas as pd
import pytest

from conftest import WritesFile
from jibjib.labels import (
    LabelError, assign_splits, label_index, load_label_map, recording_ids,
)


def qc_rows(files: dict[str, list[str]], seconds: float = 10.0) -> pd.DataFrame:
    rows = [
        {"path": f"{label}/{name}", "label": label, "status": "processed", "reason": "", "detail": "",
         "sample_rate": 44100, "channels": 1, "seconds": seconds, "frames": 998, "feature": ""}
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


def test_slices_of_a_recording_never_straddle_splits() -> None:
    split = assign_splits(corpus(40), FRACTIONS, seed=1)
    assert split.groupby(["label", "recording_id"])["split"].nunique().max() == 1
    shares = split.groupby("split")["recording_id"].nunique() / (40 * 3)
    for name, fraction in FRACTIONS.items():
        assert abs(shares[name] - fraction) < 0.1
    assert list(split.columns) == ["path", "label", "recording_id", "split"]


def test_adding_files_never_moves_a_recording() -> None:
    before = assign_splits(corpus(30), FRACTIONS, seed=7)
    grown = pd.concat([corpus(60), qc_rows({"Sylvia_atricapilla": ["Sylvia_atricapilla-1_1.wav"]})])
    after = assign_splits(grown.sample(frac=1, random_state=3), FRACTIONS, seed=7)
    merged = before.merge(after, on="path", suffixes=("_before", "_after"))
    assert len(merged) == len(before)
    assert (merged["split_before"] == merged["split_after"]).all()
    assert not before.equals(assign_splits(corpus(30), FRACTIONS, seed=8))


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
