"""Field deployments: sites and recorder time, species lists, tables for a whole deployment, activity.

The analyses use the hand-built "Tone" export of test_analyze: "Tone" scores
high where a 3 kHz tone sounds, "Other" (its softmax complement) elsewhere, so
a test knows where each species must be detected.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
from pathlib import Path

import crowsetta
import pandas as pd
import pytest

from conftest import TINY, run_snakemake, write_audio
from test_analyze import analyze_cli, soundscape, workflow_copy, write_tone_export  # noqa: F401 (a fixture)
from jibjib.analysis.recorders import PatternError, Recorders, clock, guano_timestamp
from jibjib.analysis.species_lists import SpeciesLists
from jibjib.core.errors import InputError

LABELS = ["Other", "Tone"]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    # Both species detected at 0.5: Tone where the tone sounds, Other where it does not.
    return write_tone_export(tmp_path_factory.mktemp("field") / "tone" / "1", None, [0.5, 0.5])


@pytest.mark.parametrize("name, expected", [
    ("20260501_050000.WAV", "2026-05-01T05:00:00"),  # AudioMoth
    ("north/SMA01234_20260502_061530.wav", "2026-05-02T06:15:30"),  # Song Meter Mini
    ("SM4A01234_0+1_20261231_235959.flac", "2026-12-31T23:59:59"),  # Song Meter SM4, channel suffix
    ("site/20260501_050000 (2).wav", "2026-05-01T05:00:00"),  # a copy's name
    ("dawn chorus.wav", None),
    ("20260501.wav", None),  # a date without a time
    ("20261301_050000.wav", None),  # month 13
    ("20260501_250000.wav", None),  # hour 25
    ("120260501_050000.wav", None),  # inside a longer number
    ("20260501_050000/notes.wav", None),  # a folder's name is not the file's
])
def test_recorder_names_with_and_without_times(name: str, expected: str | None) -> None:
    start = Recorders().start(None, name)
    assert (start.isoformat() if start else None) == expected


def test_time_and_site_patterns() -> None:
    recorders = Recorders(r"^(?P<site>[A-Z]+)-\d+/", r"(?P<date>\d{4}-\d{2}-\d{2})/rec_(?P<time>\d{2}h\d{2})")
    assert recorders.site("PLOT-7/2026-05-03/rec_04h30.wav") == "PLOT"
    assert recorders.start(None, "PLOT-7/2026-05-03/rec_04h30.wav") == dt.datetime(2026, 5, 3, 4, 30)
    assert recorders.site("elsewhere/x.wav") == ""
    # Where the pattern does not match, recorder names still give the time.
    assert recorders.start(None, "PLOT-7/20260503_043000.wav") == dt.datetime(2026, 5, 3, 4, 30)
    parts = Recorders(None, r"y(?P<year>\d{4})m(?P<month>\d+)d(?P<day>\d+)_(?P<hour>\d+)h(?P<minute>\d+)")
    assert parts.start(None, "y2026m5d3_4h7.wav") == dt.datetime(2026, 5, 3, 4, 7)
    assert Recorders().site("north/deep/a.wav") == "north" and Recorders().site("a.wav") == ""
    for site, time, message in [("(?P<site>", None, "not a valid regular expression"),
                                ("plot", None, "no group named site"),
                                (None, r"(?P<date>\d{8})", "needs named groups date and time")]:
        with pytest.raises(PatternError, match=message):
            Recorders(site, time)
    assert clock(dt.datetime(2026, 5, 1, 23, 59, 59), 1.5) == "2026-05-02T00:00:00.500"
    assert clock(None, 1.5) == ""


def test_guano_gives_the_time_a_name_does_not(tmp_path: Path) -> None:
    import guano

    path = write_audio(tmp_path / "renamed.wav", soundscape(2.0, 16000, []), 16000, "WAV")
    metadata = guano.GuanoFile(str(path))
    metadata["Timestamp"] = dt.datetime(2026, 5, 1, 4, 59, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    metadata.write(make_backup=False)
    start = Recorders().start(path, "renamed.wav")
    assert start == dt.datetime(2026, 5, 1, 2, 59, 30, tzinfo=dt.timezone.utc)
    assert clock(start, 0.48).endswith("+02:00") and clock(start, 0.48).startswith("2026-05-01T04:59:30.480")
    # Without GUANO, in a WAV layout Python's wave module refuses (float), or not a WAV at all: no time, no error.
    floats = write_audio(tmp_path / "float.wav", soundscape(2.0, 16000, []), 16000, "WAV", subtype="FLOAT")
    flac = write_audio(tmp_path / "a.flac", soundscape(2.0, 16000, []), 16000, "FLAC")
    assert guano_timestamp(floats) is None and guano_timestamp(flac) is None
    assert guano_timestamp(tmp_path / "missing.wav") is None


def test_species_lists_name_labels_and_cover_every_site(tmp_path: Path) -> None:
    one = tmp_path / "list.txt"
    one.write_text("# dawn survey\nTone\n\n  Other  \n")
    assert SpeciesLists(one, LABELS).allowed("anywhere") == {"Tone", "Other"}
    assert SpeciesLists(None, LABELS).allowed("x") is None
    one.write_text("Tone\nTonne\n")
    with pytest.raises(InputError, match=r"list.txt:2: 'Tonne' is not a label of the model \(did you mean 'Tone'\?\)"):
        SpeciesLists(one, LABELS)
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "north.txt").write_text("Tone\n")
    lists = SpeciesLists(folder, LABELS)
    assert lists.allowed("north") == {"Tone"}
    lists.check_sites([("north", "north/a.wav")])
    with pytest.raises(InputError, match=r"no list for site 'south' \(of south/b.wav\): expected .*lists/south.txt"):
        lists.check_sites([("north", "north/a.wav"), ("south", "south/b.wav")])
    with pytest.raises(InputError, match="no list for c.wav, which is in no site folder"):
        lists.check_sites([("", "c.wav")])


def test_a_species_list_with_an_unknown_name_stops_analyze_before_any_audio(export: Path, tmp_path: Path) -> None:
    audio = write_audio(tmp_path / "north" / "20260501_050000.wav", soundscape(3.0, 16000, []), 16000, "WAV")
    species = tmp_path / "species.txt"
    species.write_text("Tone\nParus major\n")
    out = tmp_path / "out"
    done = analyze_cli("--model", str(export), "--out", str(out), "--species-list", str(species), str(audio.parent))
    (line,) = done.stderr.strip().splitlines()
    assert done.returncode == 1 and line == f"jibjib analyze: error: {species}:2: 'Parus major' is not a label of the model"
    assert not out.exists()  # nothing written, no file analysed


def test_verify_takes_the_labels_of_an_export(export: Path, tmp_path: Path, capsys) -> None:
    from jibjib.cli import main

    verifications = tmp_path / "verifications.csv"
    verifications.write_text("file,start,end,label,score,verdict\na.wav,0,1,Tone,0.9,yes\n")
    assert main(["verify", "--verifications", str(verifications), "--out", str(tmp_path / "v"),
                 "--model", str(export)]) == 0
    verifications.write_text("file,start,end,label,score,verdict\na.wav,0,1,Parus major,0.9,yes\n")
    capsys.readouterr()
    assert main(["verify", "--verifications", str(verifications), "--out", str(tmp_path / "v"),
                 "--model", str(export)]) == 1
    assert "line 2: label 'Parus major' is not a label of the model" in capsys.readouterr().err


def _field(root: Path) -> Path:
    """Three sites: AudioMoth and Song Meter names, a file without a time, and a link with an odd name."""
    field = root / "field"
    write_audio(field / "north" / "20260501_050000.wav", soundscape(8.0, 16000, [(2.0, 4.0)]), 16000, "WAV")
    write_audio(field / "north" / "dawn.wav", soundscape(4.0, 16000, [(1.0, 2.0)], seed=1), 16000, "WAV")
    write_audio(field / "south" / "SMA01234_20260502_061530.flac", soundscape(6.0, 22050, [(3.0, 5.0)], seed=2),
                22050, "FLAC")
    target = write_audio(root / "archive" / "x.wav", soundscape(5.0, 16000, [(1.0, 2.5)], seed=3), 16000, "WAV")
    (field / "site A").mkdir()
    (field / "site A" / "dawn #1 (é), 20260503_041500.wav").symlink_to(target)
    return field


# crowsetta 5.1.2 calls DataFrame.rename(inplace=True), which pandas 3.1 deprecates: its warning, not ours.
@pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.rename")
def test_sites_times_lists_and_tables_for_a_whole_deployment(export: Path, tmp_path: Path) -> None:
    field, lists, out = _field(tmp_path), tmp_path / "lists", tmp_path / "out"
    lists.mkdir()
    (lists / "north.txt").write_text("Tone\n")
    (lists / "south.txt").write_text("# only the background here\nOther\n")
    (lists / "site A.txt").write_text("Tone\nOther\n")
    done = analyze_cli("--model", str(export), "--out", str(out), "--species-list", str(lists), "--format",
                       "raven,audacity", "--format", "kaleidoscope,csv", "--label-column", "Call", str(field))
    assert done.returncode == 0, done.stderr
    detections = pd.read_csv(out / "detections.tsv", sep="\t", keep_default_na=False)
    assert detections.groupby("site")["label"].agg(lambda s: sorted(set(s))).to_dict() == {
        "north": ["Tone"], "south": ["Other"], "site A": ["Other", "Tone"]}
    timed = detections[detections["file"] == "north/20260501_050000.wav"]
    assert timed["recorded_at"].tolist() == [clock(dt.datetime(2026, 5, 1, 5), s) for s in timed["start"]]
    assert set(detections.loc[detections["file"] == "north/dawn.wav", "recorded_at"]) == {""}
    files = pd.read_csv(out / "files.tsv", sep="\t", keep_default_na=False).set_index("file")
    linked = "site A/dawn #1 (é), 20260503_041500.wav"
    assert files.loc[linked, "recorded_at"] == "2026-05-03T04:15:00.000" and files.loc[linked, "site"] == "site A"
    assert files.loc[linked, "path"] == str(field / "site A" / "dawn #1 (é), 20260503_041500.wav")  # not the target

    # A Raven reader we did not write reads the per-file tables and the combined one.
    per_file = crowsetta.formats.bbox.Raven.from_file(out / "north" / "20260501_050000.jibjib.selections.txt",
                                                     annot_col="Call")
    assert [b.label for b in per_file.to_bbox()] == timed["label"].tolist()
    assert [b.onset for b in per_file.to_bbox()] == pytest.approx(timed["start"].tolist())
    combined = crowsetta.formats.bbox.Raven.from_file(out / "detections.selections.txt", annot_col="Call").df
    assert len(combined) == len(detections) and combined["annotation"].tolist() == detections["label"].tolist()
    # Begin Time runs on through the recordings listed, in the table's order, each for its whole duration.
    lengths = files["seconds"].astype(float)
    before = detections["file"].map(dict(zip(sorted(set(detections["file"])),
                                             pd.Series(sorted(set(detections["file"]))).map(lengths).cumsum()
                                             .shift(fill_value=0.0))))
    assert combined["begin_time_s"].to_numpy() == pytest.approx((before + detections["start"]).to_numpy(), abs=1e-3)
    assert combined["File Offset (s)"].tolist() == pytest.approx(detections["start"].tolist())
    assert combined["Begin Path"].tolist() == [files.loc[f, "path"] for f in detections["file"]]
    assert combined["Begin File"].tolist() == [os.path.basename(f) for f in detections["file"]]

    with open(out / "detections.kaleidoscope.csv", newline="", encoding="utf-8") as f:
        kaleidoscope = list(csv.DictReader(f))
    first_linked = next(r for r in kaleidoscope if r["FOLDER"] == "site A")
    assert first_linked["INDIR"] == str(field) and first_linked["IN FILE"] == "dawn #1 (é), 20260503_041500.wav"
    assert first_linked["DATE"] == "2026-05-03" and first_linked["HOUR"] == "4" and first_linked["CHANNEL"] == "0"
    assert [r["AUTO ID"] for r in kaleidoscope] == detections["label"].tolist()
    csv_table = pd.read_csv(out / "detections.csv", keep_default_na=False, dtype={"external_id": str})
    assert csv_table.drop(columns="path").equals(detections.astype({"external_id": str}))
    assert (out / "site A" / "dawn #1 (é), 20260503_041500.jibjib.labels.txt").is_file()

    # Activity: detections per site, date, hour and species, adding up to detections.tsv.
    activity = pd.read_csv(out / "activity.tsv", sep="\t", keep_default_na=False, dtype=str)
    assert activity["detections"].astype(int).sum() == len(detections)
    row = activity[(activity["site"] == "south") & (activity["label"] == "Other")]
    assert row[["date", "hour"]].values.tolist() == [["2026-05-02", "6"]]
    assert set(activity.loc[activity["date"] == "", "site"]) == {"north"}  # dawn.wav has no time
    assert (out / "activity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_deployment_tables_never_replace_a_file_jibjib_did_not_write(export: Path, tmp_path: Path) -> None:
    audio = write_audio(tmp_path / "in" / "a.wav", soundscape(3.0, 16000, [(1.0, 2.0)]), 16000, "WAV")
    out = tmp_path / "out"
    out.mkdir()
    (out / "detections.kaleidoscope.csv").write_text("my own table\n")
    done = analyze_cli("--model", str(export), "--out", str(out), "--format", "kaleidoscope", str(audio.parent))
    (line,) = done.stderr.strip().splitlines()
    assert done.returncode == 1 and "detections.kaleidoscope.csv: not a table jibjib wrote" in line
    assert (out / "detections.kaleidoscope.csv").read_text() == "my own table\n"
    done = analyze_cli("--model", str(export), "--out", str(out), "--format", "raven,kml", str(audio.parent))
    assert done.returncode == 1 and "--format: 'kml' is not one of raven, audacity, kaleidoscope, csv" in done.stderr


def test_the_workflow_lists_reviews_and_verifies_a_deployment(workflow_copy: Path) -> None:
    """analyze.species_lists, the review page (on by default) and analyze.verifications in the workflow; a list or
    a verifications file rewritten with other content reruns what reads it, one only touched reruns nothing."""
    workdir = workflow_copy
    field = workdir / "field"
    write_audio(field / "north" / "20260501_050000.wav", soundscape(4.0, 16000, []), 16000, "WAV")
    write_audio(field / "south" / "SMA01234_20260502_061530.wav", soundscape(3.0, 16000, [], seed=1), 16000, "WAV")
    species, verifications = workdir / "species.txt", workdir / "verifications.csv"
    species.write_text("Alpha_one\nBeta_two\n")
    verifications.write_text("file,start,end,label,score,verdict\nnorth/20260501_050000.wav,0.000,0.975,"
                             "Alpha_one,0.5,yes\n")
    config = {**TINY, "data_dir": str(workdir / "birds"),
              "analyze": {"input_dir": str(field), "shards": 2, "min_score": 0.0, "models": ["vggish"],
                          "species_lists": str(species), "format": ["raven", "csv"],
                          "review": {"top": 1, "score_bins": 2, "per_bin": 1},
                          "verifications": str(verifications), "target_precision": 0.8}}
    out = workdir / "results" / "analysis" / "vggish"
    run_snakemake(workdir, config=config)
    detections = pd.read_csv(out / "detections.tsv", sep="\t", keep_default_na=False)
    assert set(detections["label"]) == {"Alpha_one", "Beta_two"}  # Gamma_three is not listed
    assert set(detections["site"]) == {"north", "south"}
    assert detections.loc[detections["site"] == "south", "recorded_at"].str.startswith("2026-05-02T06:15:").all()
    items = pd.read_csv(out / "review" / "items.tsv", sep="\t", keep_default_na=False)
    assert set(items["label"]) == {"Alpha_one", "Beta_two"} and len(items) <= 2 * (1 + 2 * 1)
    assert all((out / "review" / clip).is_file() for clip in items["clip"])
    verification = pd.read_csv(out / "verification" / "verification.tsv", sep="\t", keep_default_na=False)
    assert verification[["label", "n_verified", "n_yes"]].values.tolist() == [["Alpha_one", 1, 1]]
    for name in ("activity.tsv", "activity.png", "detections.selections.txt", "detections.csv"):
        assert (out / name).is_file(), name

    os.utime(species)
    os.utime(verifications)
    assert "Nothing to be done" in run_snakemake(workdir, config=config).stderr

    species.write_text("Alpha_one\n")
    verifications.write_text(verifications.read_text() + "south/SMA01234_20260502_061530.wav,0.000,0.975,"
                             "Alpha_one,0.4,no\n")
    run_snakemake(workdir, config=config)
    assert set(pd.read_csv(out / "detections.tsv", sep="\t")["label"]) == {"Alpha_one"}
    manifests = pd.concat(pd.read_csv(p, sep="\t") for p in (out / "shards").glob("shard-??.tsv"))
    assert set(manifests["status"]) == {"reused"}  # new tables from the scores kept
    verification = pd.read_csv(out / "verification" / "verification.tsv", sep="\t", keep_default_na=False)
    assert verification[["label", "n_verified", "n_yes", "n_no"]].values.tolist() == [["Alpha_one", 2, 1, 1]]
