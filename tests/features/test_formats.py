"""FLAC, Ogg (Vorbis, Opus) and MP3 input: the features they give, and what becomes of broken ones.

FLAC is lossless and must give the WAV's features exactly; the lossy formats
are held to tolerances measured here.  Cut-off, misnamed and silent files get
the reasons jibjib.features.audio and docs/robustness.md's bad-file table describe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import chirp, feature_command_peak_rss, write_audio, write_wav
from jibjib.features import audio
from jibjib.features.audio import AudioError, open_audio, read_audio
from jibjib.labels.checks import check_data_dir
from jibjib.labels.folders import DEFAULT_BACKGROUND
from jibjib.features.extract import extract_file, extract_species
from jibjib.core.params import VGGISH
from jibjib.serving.predict import Exported
from jibjib.features.qc import ignore_reason

# name -> (libsndfile format, subtype, a sample rate it can be written at)
FORMATS = {"flac": ("FLAC", None, 22050), "mp3": ("MP3", None, 44100),
           "ogg": ("OGG", "VORBIS", 22050), "opus": ("OGG", "OPUS", 48000)}


def features_of(path: Path, tmp_path: Path) -> np.ndarray:
    npz = tmp_path / "out" / f"{path.name}.npz"
    extract_file(path, npz)
    with np.load(npz) as z:
        return z["log_mel"]


def rejection(path: Path, tmp_path: Path) -> AudioError:
    with pytest.raises(AudioError) as caught:
        extract_file(path, tmp_path / "out" / "rejected.npz")
    assert not (tmp_path / "out" / "rejected.npz").exists()
    return caught.value


def write(path: Path, samples: np.ndarray, rate: int | None = None, **options) -> Path:
    """`samples` in the format that `path`'s suffix names (FORMATS), at its rate unless given."""
    container, subtype, default_rate = FORMATS[path.suffix.lower().lstrip(".")]
    return write_audio(path, samples, rate or default_rate, container, subtype, **options)


# --- Fidelity -------------------------------------------------------------------------------

@pytest.mark.parametrize(("subtype", "channels"), [("PCM_16", 1), ("PCM_16", 2), ("PCM_24", 1)])
def test_flac_gives_the_features_of_its_wav_exactly(tmp_path: Path, subtype: str, channels: int) -> None:
    signal_ = np.stack([chirp(3.0, 44100, f0=1500 + 900 * c, seed=c) for c in range(channels)], axis=1).squeeze()
    wav = write_wav(tmp_path / "x.wav", signal_, 44100, subtype)
    # From the WAV's integers, as `flac x.wav` would: libsndfile's WAV and FLAC writers round floats differently.
    ints, _ = soundfile.read(str(wav), dtype="int32")
    flac = tmp_path / "x.flac"
    soundfile.write(str(flac), ints, 44100, subtype=subtype)
    np.testing.assert_array_equal(read_audio(flac).samples, read_audio(wav).samples)
    np.testing.assert_array_equal(features_of(flac, tmp_path), features_of(wav, tmp_path))


# Mean |log-mel difference| to the 16-bit WAV of a chirp, in every band and
# frame.  Measured at compression_level 0 (high quality, as archives serve):
# MP3 0.065 at 32 kHz, 0.043 at 44.1 and 48 kHz; Vorbis 0.057 at 22.05 kHz,
# 0.017 at 44.1 kHz; Opus 0.005.  At libsndfile's default quality (MP3 about
# 80 kbit/s mono at 44.1 kHz): MP3 0.093, Vorbis 0.122, Opus 0.148.  Most of it
# is in the quiet bands, where the codecs keep nothing; on pykanto's real
# recordings (test_frontend) the numbers are alike.  A shift by one 10 ms frame,
# the kind of error a decoder delay would make, costs 0.5.
LOSSY = [("mp3", 32000, 0.0, 0.1), ("mp3", 44100, 0.0, 0.1), ("mp3", 48000, 0.0, 0.1),
         ("ogg", 22050, 0.0, 0.1), ("ogg", 44100, 0.0, 0.1), ("opus", 16000, 0.0, 0.1), ("opus", 48000, 0.0, 0.1),
         ("mp3", 44100, None, 0.2), ("ogg", 44100, None, 0.2), ("opus", 48000, None, 0.2)]


@pytest.mark.parametrize(("suffix", "rate", "level", "tolerance"), LOSSY)
def test_lossy_formats_stay_close_to_the_wav(tmp_path: Path, suffix: str, rate: int, level: float | None,
                                            tolerance: float) -> None:
    signal_ = chirp(10.0, rate)
    reference = features_of(write_wav(tmp_path / "x.wav", signal_, rate), tmp_path)
    options = {} if level is None else {"compression_level": level}
    got = features_of(write(tmp_path / f"x.{suffix}", signal_, rate, **options), tmp_path)
    assert got.shape == reference.shape  # the same length: no decoder delay or padding left in
    assert np.abs(got - reference).mean() < tolerance
    # Where the sweep sounds, its loudest band is where it was (within one band;
    # measured: in at least 99.5 % of those frames, all at 32 kHz and above).
    sounding = reference.max(axis=1) > reference.max() - np.log(10)  # within 20 dB of the loudest frame
    assert 0.5 < sounding.mean() < 0.7  # the sweep sounds for 0.3 s of every 0.5 s
    off = np.abs(got.argmax(axis=1) - reference.argmax(axis=1))[sounding]
    assert (off <= 1).mean() >= (0.98 if level is not None else 0.95)


@pytest.mark.parametrize("suffix", sorted(FORMATS))
def test_blocks_of_any_size_decode_the_same_samples(tmp_path: Path, monkeypatch, suffix: str) -> None:
    path = write(tmp_path / f"x.{suffix}", np.stack([chirp(4.0, FORMATS[suffix][2]), chirp(4.0, FORMATS[suffix][2],
                                                                                             f0=3000)], axis=1))
    whole = read_audio(path)
    assert whole.channels == 2 and whole.samples.shape == (4 * FORMATS[suffix][2], 2)
    monkeypatch.setattr(audio, "BLOCK_FRAMES", 10007)
    np.testing.assert_array_equal(read_audio(path).samples, whole.samples)


@pytest.mark.parametrize("suffix", ["flac", "mp3"])
def test_long_compressed_files_in_bounded_memory(tmp_path: Path, suffix: str) -> None:
    """As for WAV (test_bad_input): memory must not grow with the length of the file."""
    minutes = {"flac": 20, "mp3": 6}[suffix]  # LAME encodes at about 60x real time here
    piece = chirp(30.0, 48000)
    data = tmp_path / "birds"
    for label, count in (("short", 1), ("long", minutes * 2)):
        write_audio(data / label / f"x.{suffix}", np.tile(piece, count), 48000, FORMATS[suffix][0])
    peaks = {label: feature_command_peak_rss(data, label, tmp_path) for label in ("short", "long")}
    extra_float32 = (minutes - 0.5) * 60 * 48000 * 4
    assert peaks["long"] - peaks["short"] < extra_float32 / 2, peaks
    with np.load(tmp_path / "features" / "long" / "x.npz") as z:
        assert z["log_mel"].shape == (VGGISH.n_frames(minutes * 60 * 16000), 64)



def _bytes_read() -> int:
    """Bytes this process has read through read(2) and friends so far (Linux: /proc/self/io rchar)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


@pytest.mark.parametrize(("name", "container", "subtype"), [
    ("x.flac", "FLAC", None), ("x.mp3", "MP3", None), ("x.ogg", "OGG", "VORBIS"), ("x24.wav", "WAV", "PCM_24"),
    ("x16.wav", "WAV", "PCM_16")])
def test_decoding_hashes_the_file_in_the_same_read(tmp_path: Path, name: str, container: str,
                                                   subtype: str | None) -> None:
    """The content hash comes from the bytes decoding reads: every format is read once, not once more to hash."""
    import hashlib

    rate = 44100 if container == "MP3" else 22050
    path = write_audio(tmp_path / name, np.stack([chirp(60.0, rate), chirp(60.0, rate, f0=3000)], axis=1),
                       rate, container, subtype)
    size = path.stat().st_size
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    before = _bytes_read()
    with open_audio(path) as reader:
        frames = sum(block.shape[0] for block in reader.blocks())
        digest = reader.sha256()
    read = _bytes_read() - before
    assert digest == expected and frames == 60 * rate
    # Checks and decoders peek at the end (an Ogg file's last pages: about 130 kB in all, whatever its length);
    # a second pass to hash would add the whole file.
    assert size > 400_000 and read < size + 200_000, (read, size)


# --- Broken, misnamed and odd files ---------------------------------------------------------

@pytest.mark.parametrize(("suffix", "detail"), [("flac", "cut off or damaged"), ("mp3", "header declares"),
                                                ("ogg", "Ogg page is cut off"), ("opus", "Ogg page is cut off")])
def test_cut_off_files_are_truncated(tmp_path: Path, suffix: str, detail: str) -> None:
    whole = write(tmp_path / f"whole.{suffix}", chirp(5.0, FORMATS[suffix][2])).read_bytes()
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    error = rejection(cut, tmp_path)
    assert error.reason == "truncated" and detail in error.detail
    # Cut inside the header: nothing libsndfile can open.
    cut.write_bytes(whole[:40])
    assert rejection(cut, tmp_path).reason == "unreadable"


@pytest.mark.parametrize("suffix", ["ogg", "opus"])
def test_ogg_cut_at_a_page_boundary_is_truncated(tmp_path: Path, suffix: str) -> None:
    """libsndfile would read it as a shorter recording: the missing end-of-stream page tells."""
    whole = write(tmp_path / f"whole.{suffix}", chirp(5.0, FORMATS[suffix][2])).read_bytes()
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(whole[: whole.rfind(b"OggS", 0, len(whole) * 2 // 3)])
    assert soundfile.info(str(cut)).frames > 0
    error = rejection(cut, tmp_path)
    assert error.reason == "truncated" and "end-of-stream" in error.detail


@pytest.mark.parametrize(("suffix", "outcome"), [("flac", "of the 5.000 s the header declares"),
                                                 ("ogg", "header declares"), ("opus", "header declares"), ("mp3", "")])
def test_damage_in_the_middle(tmp_path: Path, suffix: str, outcome: str) -> None:
    """FLAC loses sync as if cut off; Ogg loses the damaged page's samples; mpg123 conceals a damaged
    MP3 frame, so that file is processed (as a player would play it)."""
    damaged = bytearray(write(tmp_path / f"x.{suffix}", chirp(5.0, FORMATS[suffix][2])).read_bytes())
    damaged[len(damaged) // 2:len(damaged) // 2 + 64] = bytes(64)
    (tmp_path / f"x.{suffix}").write_bytes(damaged)
    if not outcome:
        assert features_of(tmp_path / f"x.{suffix}", tmp_path).shape[0] == VGGISH.n_frames(5 * 16000)
        return
    error = rejection(tmp_path / f"x.{suffix}", tmp_path)
    assert error.reason == "truncated" and outcome in error.detail


def _without_first_frame(mp3: bytes) -> bytes:
    """An MP3 stream without its first frame, which holds LAME's Xing/Info header."""
    assert b"Xing" in mp3[:64] or b"Info" in mp3[:64]
    return mp3[audio._mp3_frame(mp3[:4])[0]:]


def test_mp3_without_a_length_header(tmp_path: Path) -> None:
    """libsndfile only estimates such a file's length, from the first frame's bitrate, and reads no further."""
    id3 = b"ID3\x03\x00\x00\x00\x00\x00\x40" + bytes(64)  # a tag before the first frame, as downloads have
    signal_ = chirp(3.0, 44100)
    # Constant bitrate: the estimate is close, and what is decoded counts.
    cbr = write(tmp_path / "cbr.mp3", signal_, compression_level=0.5, bitrate_mode="CONSTANT").read_bytes()
    path = tmp_path / "headerless_cbr.mp3"
    path.write_bytes(id3 + _without_first_frame(cbr))
    with open_audio(path) as reader:
        assert not reader.info.exact
        decoded = sum(block.shape[0] for block in reader.blocks())
        assert reader.info.exact and reader.info.frames == decoded
    # Without the header LAME's encoder delay stays in: whole frames of 1152 samples.
    assert decoded % 1152 == 0 and 0 <= decoded - signal_.size < 3 * 1152
    assert features_of(path, tmp_path).shape[0] == VGGISH.n_frames(round(decoded * 16000 / 44100))
    # Cut off: the last frame's header says how long it should be.
    path.write_bytes(path.read_bytes()[:-300])
    error = rejection(path, tmp_path)
    assert error.reason == "truncated" and "last MPEG frame" in error.detail
    # Variable bitrate: libsndfile would read a fraction of it.
    path.write_bytes(_without_first_frame(write(tmp_path / "vbr.mp3", signal_).read_bytes()))
    error = rejection(path, tmp_path)
    assert error.reason == "unsupported_format" and "bitrate varies" in error.detail


# (what is written, the name it gets) -> (reason, text in the detail); '' for a processed file.
MISNAMED = {
    ("flac", "x.mp3"): ("format_mismatch", "FLAC data in a .mp3 file (rename it to .flac)"),
    ("mp3", "x.flac"): ("format_mismatch", "MP3 data in a .flac file (rename it to .mp3)"),
    ("ogg", "x.opus"): ("format_mismatch", "OGG/VORBIS data in a .opus file (rename it to .ogg)"),
    ("wav", "x.ogg"): ("format_mismatch", "WAV data in a .ogg file (rename it to .wav)"),
    ("mp3", "x"): ("format_mismatch", "MP3 data in a file without a suffix (rename it to .mp3)"),
    ("aiff", "x.flac"): ("unsupported_format", "AIFF data in a .flac file"),
    ("opus", "x.ogg"): ("", ""),
    ("opus", "x.oga"): ("", ""),
    ("ogg", "x.OGA"): ("", ""),
    ("flac", "x.FLAC"): ("", ""),
}


@pytest.mark.parametrize(("written", "name"), MISNAMED)
def test_the_name_must_say_what_the_data_is(tmp_path: Path, written: str, name: str) -> None:
    reason, detail = MISNAMED[written, name]
    source = tmp_path / f"source.{written}"
    if written in FORMATS:
        write(source, chirp(2.0, FORMATS[written][2]))
    else:
        soundfile.write(str(source), chirp(2.0, 22050), 22050, format=written.upper())
    path = source.rename(tmp_path / name)
    if reason:
        error = rejection(path, tmp_path)
        assert (error.reason, error.detail) == (reason, detail)
    else:
        assert features_of(path, tmp_path).shape[0] > 96


@pytest.mark.parametrize("suffix", ["flac", "mp3", "ogg", "opus"])
def test_not_audio_empty_silent_and_short(tmp_path: Path, suffix: str) -> None:
    rate = FORMATS[suffix][2]
    text = tmp_path / f"page.{suffix}"
    text.write_text("<html><body>429 Too Many Requests</body></html>\n" * 30)  # what a failed download saves
    error = rejection(text, tmp_path)
    # libsndfile's MPEG probe would call it "not a regular file (possibly a pipe?)".
    assert error.reason == "unreadable" and "pipe" not in error.detail
    (tmp_path / f"empty.{suffix}").write_bytes(b"")
    assert rejection(tmp_path / f"empty.{suffix}", tmp_path).reason == "empty"
    # Opus decodes digital silence to about 1e-34, not to zeros.
    assert rejection(write(tmp_path / f"silence.{suffix}", np.zeros(2 * rate, np.float32)), tmp_path).reason == "silent"
    assert rejection(write(tmp_path / f"short.{suffix}", chirp(0.9, rate)), tmp_path).reason == "too_short"


def test_flac_without_its_length_is_refused(tmp_path: Path) -> None:
    """A streaming encoder may leave STREAMINFO's sample count 0; soundfile then fails on the last block."""
    flac = bytearray(write(tmp_path / "x.flac", chirp(2.0, 22050)).read_bytes())
    assert flac[:4] == b"fLaC"
    flac[21] &= 0xF0  # the 36-bit total, in STREAMINFO from byte 8 + 13
    flac[22:26] = bytes(4)
    (tmp_path / "x.flac").write_bytes(flac)
    assert rejection(tmp_path / "x.flac", tmp_path).reason == "unsupported_format"


def test_a_species_folder_of_mixed_formats(tmp_path: Path) -> None:
    data = tmp_path / "birds"
    folder = data / "Alpha_one"
    for name, kind in (("a.flac", "flac"), ("b.MP3", "mp3"), ("c.ogg", "ogg"), ("d.opus", "opus"), ("e.Oga", "ogg")):
        container, subtype, rate = FORMATS[kind]
        write_audio(folder / name, chirp(2.0, rate), rate, container, subtype)
    write_wav(folder / "a.wav", chirp(2.0, 22050), 22050)  # a.flac sorts first and keeps a.npz
    for name in ("notes.txt", "song.m4a", "song.mp3.part"):
        (folder / name).write_bytes(b"not for us")
    write_wav(data / "Beta_two" / "x.wav", chirp(2.0, 22050), 22050)
    assert "Alpha_one" in check_data_dir(data, DEFAULT_BACKGROUND)
    qc, stats = extract_species(data, "Alpha_one", tmp_path / "features")
    reasons = dict(zip(qc["path"].str.removeprefix("Alpha_one/"), qc["reason"]))
    assert reasons == {"a.flac": "", "b.MP3": "", "c.ogg": "", "d.opus": "", "e.Oga": "", "a.wav": "duplicate_name",
                       "notes.txt": "not_audio", "song.m4a": "not_audio", "song.mp3.part": "not_audio"}
    assert stats.computed == 5
    assert sorted(p.name for p in (tmp_path / "features" / "Alpha_one").iterdir()) == [
        "a.npz", "b.npz", "c.npz", "d.npz", "e.npz"]
    assert qc.set_index("path").loc["Alpha_one/d.opus", "sample_rate"] == 48000
    assert ignore_reason(Path("x.MP3")) == "" and ignore_reason(Path("x.aiff")) == "not_audio"


def test_predict_reads_what_the_feature_step_reads(tmp_path: Path) -> None:
    """`jibjib predict` goes through the same reader and checks (its model is not needed for that)."""
    model = object.__new__(Exported)  # only the front-end parameters are used for reading
    model.params = VGGISH
    for suffix in FORMATS:
        waveform = model.waveform(write(tmp_path / f"x.{suffix}", chirp(2.0, FORMATS[suffix][2])))
        assert waveform.dtype == np.float32 and waveform.shape == (32000,)
    headerless = tmp_path / "short.mp3"
    cbr = write(tmp_path / "cbr.mp3", chirp(0.8, 44100), compression_level=0.5, bitrate_mode="CONSTANT")
    headerless.write_bytes(_without_first_frame(cbr.read_bytes()))
    with pytest.raises(AudioError, match="too_short"):  # known only once decoded
        model.waveform(headerless)
    (tmp_path / "cut.flac").write_bytes((tmp_path / "x.flac").read_bytes()[:5000])
    with pytest.raises(AudioError, match="truncated"):
        model.waveform(tmp_path / "cut.flac")
