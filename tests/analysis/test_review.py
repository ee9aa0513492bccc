"""The review page and `jibjib verify`: which detections a reviewer sees, the page in a real browser, and what
the verifications say of each species, checked against hand computations.

The analyses here are written by hand (detections.tsv, files.tsv and the
recordings), so no model is needed: the page only reads those.
"""

from __future__ import annotations

import json
import math
import random
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize

from conftest import write_audio
from test_analyze import soundscape
from jibjib.analysis.review_sample import SAMPLE, TOP, choose_items
from jibjib.analysis.tables import FILE_COLUMNS, detection_columns
from jibjib.cli import main

Z95 = 1.959963984540054  # the normal quantile of a two-sided 95 % interval


def wilson(successes: int, n: int) -> tuple[float, float]:
    """The Wilson score interval by its formula (the code under test uses scipy's)."""
    p = successes / n
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n ** 2)) / (1 + Z95 ** 2 / n)
    return centre - half, centre + half


def write_detections(path: Path, rows: list[list[object]]) -> None:
    pd.DataFrame(rows, columns=detection_columns(False)).to_csv(path, sep="\t", index=False)


def hand_made_analysis(root: Path) -> Path:
    """Two recordings, detections of two species (one with a space in its name) at known scores."""
    field, analysis = root / "field", root / "analysis"
    analysis.mkdir(parents=True)
    files = {"north/20260501_050000.wav": (12.0, [(1.0, 3.0), (6.0, 7.0)]), "south/dawn, 2.wav": (6.0, [(2.0, 3.0)])}
    rows, detections = [], []
    for k, (name, (seconds, tones)) in enumerate(files.items()):
        write_audio(field / name, soundscape(seconds, 16000, tones, seed=k), 16000, "WAV")
        rows.append({"file": name, "status": "analysed", "seconds": seconds, "sample_rate": 16000, "channels": 1,
                     "site": name.split("/")[0], "path": str(field / name)})
    for start, score in [(1.0, 0.99), (1.5, 0.95), (2.0, 0.91), (6.0, 0.72), (6.5, 0.55), (9.0, 0.51)]:
        at = f"2026-05-01T05:00:{int(start):02d}.{int(start * 1000) % 1000:03d}"
        detections.append(["north/20260501_050000.wav", f"{start:.3f}", f"{start + 0.975:.3f}", "Tone",
                           f"{score:.4f}", "north", at])
    detections += [["south/dawn, 2.wav", "2.000", "2.975", "Parus major", "0.8000", "south", ""],
                   ["south/dawn, 2.wav", "4.000", "4.975", "Parus major", "0.6000", "south", ""]]
    detections.sort(key=lambda r: (r[0], float(r[1]), r[3]))
    write_detections(analysis / "detections.tsv", detections)
    pd.DataFrame(rows).reindex(columns=FILE_COLUMNS).to_csv(analysis / "files.tsv", sep="\t", index=False)
    return analysis


def test_the_sample_is_the_best_and_a_seeded_draw_per_score_bin(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rows = [[f"r{k // 10}.wav", f"{k % 10:.3f}", f"{k % 10 + 0.975:.3f}", "A", f"{s:.4f}", "", ""]
            for k, s in enumerate(rng.uniform(0.5, 1.0, 200))]
    rows += [["z.wav", f"{k:.3f}", f"{k + 0.975:.3f}", "B", f"{s:.4f}", "", ""] for k, s in enumerate((0.7, 0.8, 0.9))]
    write_detections(tmp_path / "d.tsv", rows)
    items = choose_items(tmp_path / "d.tsv", top=3, score_bins=4, per_bin=2, seed=0)
    a = [i for i in items if i.label == "A"]
    scores = sorted((float(r[4]) for r in rows if r[3] == "A"), reverse=True)
    assert [float(i.score) for i in a if i.kind == TOP] == scores[:3]
    sample = [i for i in a if i.kind == SAMPLE]
    assert [i.score_bin for i in sample] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert all(i.bin_low <= float(i.score) <= i.bin_high for i in sample)
    assert not {i.key for i in sample} & {i.key for i in a if i.kind == TOP}
    # B has three detections: all among its top, nothing left to sample.
    assert [(i.kind, i.score) for i in items if i.label == "B"] == [(TOP, "0.9000"), (TOP, "0.8000"), (TOP, "0.7000")]
    # The draw depends on the seed and the detections, not on their order in the file.
    random.Random(1).shuffle(rows)
    write_detections(tmp_path / "shuffled.tsv", rows)
    assert choose_items(tmp_path / "shuffled.tsv", 3, 4, 2, seed=0) == items
    assert choose_items(tmp_path / "d.tsv", 3, 4, 2, seed=1) != items


def test_the_page_is_offline_and_refuses_a_folder_of_other_files(tmp_path: Path, capsys) -> None:
    analysis = hand_made_analysis(tmp_path)
    out = tmp_path / "review"
    assert main(["review", "--analysis", str(analysis), "--out", str(out), "--top", "1", "--per-bin", "1"]) == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    # Nothing from a network: no addresses, no external styles, fonts or scripts.
    assert not re.search(r"https?://|<link|@import|url\(|<script[^>]+src=", page)
    items = pd.read_csv(out / "items.tsv", sep="\t", keep_default_na=False, dtype=str)
    assert set(items["label"]) == {"Tone", "Parus major"} and (out / items["clip"][0]).is_file()
    # Run again over its own page: fine. A folder of someone else's files: one line, nothing touched.
    assert main(["review", "--analysis", str(analysis), "--out", str(out), "--seed", "5"]) == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    capsys.readouterr()
    assert main(["review", "--analysis", str(analysis), "--out", str(mine)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "holds files that are not a review page jibjib wrote (notes.txt)" in line
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    # An analysis without detections still gets its page, which says so.
    write_detections(analysis / "detections.tsv", [])
    assert main(["review", "--analysis", str(analysis), "--out", str(tmp_path / "empty")]) == 0
    empty = (tmp_path / "empty" / "index.html").read_text(encoding="utf-8")
    data = json.loads(re.search(r'<script type="application/json" id="review-data">(.*?)</script>', empty, re.S)[1])
    assert data["items"] == [] and data["species"] == []
    assert pd.read_csv(tmp_path / "empty" / "items.tsv", sep="\t").empty


def verification_rows(label: str, pairs: list[tuple[float, str]]) -> list[str]:
    return [f"f{k}.wav,{k}.000,{k}.975,{label},{score:.4f},{verdict}" for k, (score, verdict) in enumerate(pairs)]


def test_verify_numbers_against_a_hand_computation(tmp_path: Path) -> None:
    overlap = [(0.55, "no"), (0.60, "no"), (0.62, "yes"), (0.66, "no"), (0.70, "yes"), (0.74, "no"), (0.78, "yes"),
               (0.83, "yes"), (0.88, "yes"), (0.93, "yes"), (0.97, "yes"), (0.99, "yes"), (0.65, "unsure"),
               (0.90, "unsure")]
    lines = ["file,start,end,label,score,verdict"] + verification_rows("Tone", overlap)
    lines += verification_rows("Parus major", [(0.8, "yes")] * 3)  # only yes
    lines += verification_rows("Split", [(0.5 + 0.01 * k, "no") for k in range(5)]
                               + [(0.9 + 0.01 * k, "yes") for k in range(5)])  # perfectly apart
    csv_path = tmp_path / "verifications.csv"
    csv_path.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")  # as a spreadsheet saves it
    out = tmp_path / "verification"
    assert main(["verify", "--verifications", str(csv_path), "--out", str(out), "--target-precision", "0.8",
                 "--analysis", str(hand_made_analysis_labels(tmp_path, ["Tone", "Parus major", "Split"]))]) == 0
    table = pd.read_csv(out / "verification.tsv", sep="\t", keep_default_na=False).set_index("label")

    tone = table.loc["Tone"]
    number = lambda key: float(tone[key])  # noqa: E731 (empty cells in other rows keep the columns as text)
    assert (tone["n_verified"], tone["n_yes"], tone["n_no"], tone["n_unsure"]) == (12, 8, 4, 2)
    assert number("precision") == pytest.approx(8 / 12, abs=1e-4)
    assert (number("precision_low"), number("precision_high")) == pytest.approx(wilson(8, 12), abs=1e-4)
    # The fit: maximum likelihood of P(yes) = expit(a + b logit(score)) on the 12 yes/no verdicts, by hand.
    decided = [(s, v == "yes") for s, v in overlap if v != "unsure"]
    x = np.array([math.log(s / (1 - s)) for s, _ in decided])
    y = np.array([float(v) for _, v in decided])

    def negative_log_likelihood(ab: np.ndarray) -> float:
        z = ab[0] + ab[1] * x
        return float(np.sum(np.logaddexp(0, z) - y * z))

    a, b = minimize(negative_log_likelihood, np.zeros(2), method="Nelder-Mead",
                    options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000}).x
    assert (number("fit_intercept"), number("fit_slope")) == pytest.approx((a, b), abs=2e-3)
    threshold = 1 / (1 + math.exp(-(math.log(0.8 / 0.2) - a) / b))
    assert number("threshold_for_target") == pytest.approx(threshold, abs=1e-3) and tone["reason"] == ""
    assert 0.55 < threshold < 0.99 and (out / tone["figure"]).read_bytes()[:4] == b"\x89PNG"

    assert table.loc["Parus major", "threshold_for_target"] == ""
    assert table.loc["Parus major", "reason"] == "3 yes/no verdicts: the fit needs at least 10"
    assert float(table.loc["Parus major", "precision"]) == 1.0
    assert table.loc["Split", "reason"].startswith("every no scores below every yes (0.5400 < 0.9000)")
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["Parus_major.png", "Split.png", "Tone.png"]
    # Verified again without two species: their figures go with their rows.
    csv_path.write_text("\n".join(lines[:1 + len(overlap)]) + "\n")
    assert main(["verify", "--verifications", str(csv_path), "--out", str(out),
                 "--analysis", str(hand_made_analysis_labels(tmp_path, ["Tone"]))]) == 0
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["Tone.png"]


def hand_made_analysis_labels(root: Path, labels: list[str]) -> Path:
    """An analysis folder whose detections.tsv has these labels (what verify checks labels against)."""
    folder = root / "labels-analysis"
    folder.mkdir(exist_ok=True)
    write_detections(folder / "detections.tsv", [["a.wav", "0.000", "0.975", label, "0.9000", "", ""]
                                                  for label in labels])
    return folder


@pytest.mark.parametrize("text, message", [
    ("file,start,end,label,score\na.wav,0,1,Tone,0.9\n", "no column verdict (expected file, start, end, label, "
                                                         "score, verdict)"),
    ("file,start,end,label,score,verdict\na.wav,0,1,Tone,0.9,yes\na.wav,1,2,Tonne,0.9,no\n",
     "line 3: label 'Tonne' is not a label of the analysis in "),
    ("file,start,end,label,score,verdict\na.wav,0,1,Tone,0.9,maybe\n",
     "line 2: verdict 'maybe' is not one of yes, no, unsure"),
    ("file,start,end,label,score,verdict\na.wav,0,1,Tone,high,yes\n", "line 2: score 'high' is not a number"),
    ("file,start,end,label,score,verdict\n", "no verifications (the header alone)"),
])
def test_a_bad_verifications_file_gets_one_line(tmp_path: Path, capsys, text: str, message: str) -> None:
    path = tmp_path / "verifications.csv"
    path.write_text(text)
    analysis = hand_made_analysis_labels(tmp_path, ["Tone"])
    assert main(["verify", "--verifications", str(path), "--out", str(tmp_path / "out"),
                 "--analysis", str(analysis)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"jibjib verify: error: {path}: {message}" or line.startswith(
        f"jibjib verify: error: {path}: {message}"), line
    assert not (tmp_path / "out").exists()


def chromium(download_dir: Path):
    """Headless Debian chromium driven by its chromedriver (apt: chromium, chromium-driver), quiet on a closed
    network: no background requests, a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={tempfile.mkdtemp(prefix='jibjib-chromium-', dir=download_dir.parent)}",
                     "--window-size=1280,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    # Downloads in headless Chrome need a folder and permission, given through the DevTools protocol.
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


def test_the_review_page_in_a_real_browser(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    analysis = hand_made_analysis(tmp_path)
    out, downloads = tmp_path / "review", tmp_path / "downloads"
    downloads.mkdir()
    assert main(["review", "--analysis", str(analysis), "--out", str(out), "--top", "2", "--score-bins", "2",
                 "--per-bin", "1"]) == 0
    items = pd.read_csv(out / "items.tsv", sep="\t", keep_default_na=False, dtype=str)
    tone = items[items["label"] == "Tone"]["id"].tolist()
    parus = items[items["label"] == "Parus major"]["id"].tolist()
    assert len(tone) == 4 and len(parus) == 2
    # One of them in "south/dawn, 2.wav": the CSV must quote its name.
    marks = {parus[1]: "yes", tone[0]: "yes", tone[3]: "no"}

    driver = chromium(downloads)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get((out / "index.html").as_uri())
        wait.until(lambda d: d.execute_script(
            "return document.images.length === arguments[0] && "
            "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)", len(items)))
        duration = wait.until(lambda d: d.execute_script(
            "const a = document.querySelector('#item-' + arguments[0] + ' audio');"
            "return a && a.duration > 0 ? a.duration : null", tone[0]))
        # The clip: the detection (0.975 s) and a second either side.
        assert duration == pytest.approx(2.975, abs=0.01)
        for item, verdict in marks.items():
            driver.find_element(By.CSS_SELECTOR, f"#item-{item} input[value={verdict}]").click()
        wait.until(lambda d: d.find_element(By.ID, "progress").text == f"3 of {len(items)} detections marked")
        # Marks persist in the browser: a reloaded page shows them.
        driver.refresh()
        wait.until(lambda d: all(d.execute_script(
            "const i = document.querySelector('#item-' + arguments[0] + ' input[value=' + arguments[1] + ']');"
            "return i !== null && i.checked", item, verdict) for item, verdict in marks.items()))
        shown = driver.execute_script("return jibjibVerificationsCsv()")
        driver.find_element(By.ID, "export").click()
        downloaded = downloads / "verifications.csv"
        wait.until(lambda d: downloaded.is_file() and not list(downloads.glob("*.crdownload"))
                   and downloaded.read_bytes().decode("utf-8") == shown)
    finally:
        driver.quit()

    exported = pd.read_csv(downloaded, keep_default_na=False, dtype=str)
    assert list(exported.columns) == ["file", "start", "end", "label", "score", "verdict"]
    assert exported["verdict"].tolist() == list(marks.values())
    chosen = items.set_index("id").loc[list(marks)]
    assert exported[["file", "start", "end", "score"]].values.tolist() == \
        chosen[["file", "start", "end", "score"]].values.tolist()
    assert main(["verify", "--verifications", str(downloaded), "--out", str(tmp_path / "verification"),
                 "--analysis", str(analysis)]) == 0
    result = pd.read_csv(tmp_path / "verification" / "verification.tsv", sep="\t", keep_default_na=False)
    parus_row, tone_row = result.to_dict("records")
    # By hand: Parus major one yes of one, Tone one yes and one no.
    for row, label, yes, no in ((parus_row, "Parus major", 1, 0), (tone_row, "Tone", 1, 1)):
        assert (row["label"], row["n_verified"], row["n_yes"], row["n_no"], row["n_unsure"]) == (label, yes + no, yes,
                                                                                                 no, 0)
        assert row["precision"] == pytest.approx(yes / (yes + no), abs=1e-4)
        assert (row["precision_low"], row["precision_high"]) == pytest.approx(wilson(yes, yes + no), abs=1e-4)
        assert row["threshold_for_target"] == "" and row["reason"].endswith("the fit needs at least 10")
