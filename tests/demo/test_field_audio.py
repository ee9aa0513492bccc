"""The unlabelled demo field audio: deterministic, left alone when intact, new renditions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile

from jibjib.demo.field import make_field_audio
from jibjib.demo.songs import make_species, species_names
from jibjib.demo.soundscapes import MAX_FILES, _plan_file
from jibjib.demo.species import DEFAULT_SEED

ARGS = {"n_files": 2, "min_seconds": 30.0, "max_seconds": 35.0}


def test_field_audio_is_deterministic_and_kept(tmp_path: Path) -> None:
    names, seconds = make_field_audio(tmp_path / "a", **ARGS)
    assert names == [p.name for p in sorted((tmp_path / "a").glob("field*"))] and 60 <= seconds <= 70
    first = {name: (tmp_path / "a" / name).stat().st_ino for name in names}
    assert make_field_audio(tmp_path / "a", **ARGS) == (names, seconds)
    assert {name: (tmp_path / "a" / name).stat().st_ino for name in names} == first  # not written again
    make_field_audio(tmp_path / "b", **ARGS)
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        audio, _ = soundfile.read(tmp_path / "a" / name)
        assert np.abs(audio).max() > 0.01  # not silence
    assert not list((tmp_path / "a").glob("*.selections.txt"))  # unlabelled


def test_field_songs_are_not_the_annotated_soundscapes_songs() -> None:
    species = [make_species(DEFAULT_SEED, i, name) for i, name in enumerate(species_names(DEFAULT_SEED, 3))]
    annotated = [_plan_file(DEFAULT_SEED, k, species, 40.0) for k in range(5)]
    field = [_plan_file(DEFAULT_SEED, MAX_FILES + k, species, 40.0) for k in range(2)]
    seen = {call.song.tobytes() for plan in annotated for call in plan.calls}
    assert all(call.song.tobytes() not in seen for plan in field for call in plan.calls)
    assert sum(len(plan.calls) for plan in field) > 0


def test_make_demo_writes_field_audio_only_when_asked(tmp_path: Path, monkeypatch, capsys) -> None:
    from jibjib.cli import main
    from jibjib.demo import field

    small = field.make_field_audio
    monkeypatch.setattr(field, "make_field_audio", lambda folder, **kw: small(folder, **{**kw, **ARGS}))
    common = ["--species", "3", "--recordings", "1", "--background-recordings", "1", "--soundscapes", ""]
    assert main(["make-demo", str(tmp_path / "a" / "birds"), *common]) == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["birds"]
    assert main(["make-demo", str(tmp_path / "b" / "birds"), *common, "--field", str(tmp_path / "b" / "field")]) == 0
    assert sorted(p.name for p in (tmp_path / "b" / "field").glob("field*")) == ["field1.ogg", "field2.mp3"]
    assert "demo field audio (unlabelled, for self-training)" in capsys.readouterr().err
