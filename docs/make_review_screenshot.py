"""Write docs/figures/review_page.png: the review page of `jibjib review`, in headless chromium.

    python docs/make_review_screenshot.py   # after `make demo` wrote resources/demo_soundscapes

The page is built from the demo soundscapes, with detections made from their
annotations, not by a model: every window (0.975 s, every 0.48 s) that
overlaps an annotated call by half is a detection of its species, scored at
random between 0.6 and 1 (seeded), and one window in twenty elsewhere a false
detection of a random species, scored between 0.5 and 0.8. Each soundscape is
a site, recorded from 05:00 on 1 May 2026. Three detections are marked (yes,
no, unsure) before the screenshot. Needs Debian's chromium and chromium-driver
(docs/development.md).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SOUNDSCAPES = REPO / "resources" / "demo_soundscapes"
OUTPUT = REPO / "docs" / "figures" / "review_page.png"
WINDOW, HOP = 0.975, 0.48


def demo_analysis(folder: Path) -> Path:
    """detections.tsv and files.tsv of a pretend analysis of the demo soundscapes, in `folder`."""
    import numpy as np
    import soundfile

    from jibjib.analysis.annotations import read_annotations, recording_key
    from jibjib.analysis.recorders import clock
    from jibjib.analysis.tables import FILE_COLUMNS, detection_columns
    from jibjib.core import fsutil
    from jibjib.features.qc import ignore_reason, species_files

    import datetime as dt

    rng = np.random.default_rng(26)
    calls = read_annotations(SOUNDSCAPES)
    species = sorted({c.label for found in calls.values() for c in found})
    files, rows = [], []
    for day, path in enumerate(p for p in species_files(SOUNDSCAPES) if not ignore_reason(p.relative_to(SOUNDSCAPES))):
        name = path.relative_to(SOUNDSCAPES).as_posix()
        seconds = soundfile.info(str(path)).duration
        start_time = dt.datetime(2026, 5, 1 + day, 5, 0)
        site = Path(name).stem
        files.append({"file": name, "status": "analysed", "seconds": round(seconds, 4), "site": site,
                      "recorded_at": clock(start_time, 0.0), "path": str(path.resolve())})
        for start in np.arange(0.0, seconds - WINDOW, HOP):
            end = start + WINDOW
            heard = {c.label for c in calls.get(recording_key(name), [])
                     if min(end, c.end) - max(start, c.start) >= 0.5 * min(WINDOW, c.end - c.start)}
            for label in sorted(heard):
                rows.append([name, start, end, label, rng.uniform(0.6, 1.0), site, clock(start_time, start)])
            if not heard and rng.random() < 0.05:
                rows.append([name, start, end, rng.choice(species), rng.uniform(0.5, 0.8), site,
                             clock(start_time, start)])
    rows.sort(key=lambda r: (r[0], r[1], r[3]))
    fsutil.write_rows(folder / "detections.tsv", detection_columns(False),
                      [[r[0], f"{r[1]:.3f}", f"{r[2]:.3f}", r[3], f"{r[4]:.4f}", r[5], r[6]] for r in rows])
    fsutil.write_rows(folder / "files.tsv", FILE_COLUMNS, [[f.get(c, "") for c in FILE_COLUMNS] for f in files])
    return folder


def screenshot(page: Path, out: Path, profile: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={profile}", "--window-size=1280,1000", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        driver.get(page.as_uri())
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(
            "return document.images.length > 0 && Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"))
        cards = driver.find_elements(By.CSS_SELECTOR, ".card")
        for card, verdict in zip(cards, ("yes", "no", "unsure")):
            card.find_element(By.CSS_SELECTOR, f"input[value={verdict}]").click()
        WebDriverWait(driver, 10).until(lambda d: "3 of" in d.find_element(By.ID, "progress").text)
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    # A palette of 128 colours: a third of the bytes, and the page looks the same.
    import io

    from PIL import Image

    Image.open(io.BytesIO(png)).convert("RGB").quantize(128, Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE) \
        .save(out, optimize=True)


def main() -> int:
    if not SOUNDSCAPES.is_dir():
        print(f"make_review_screenshot: {SOUNDSCAPES} is missing: run `make demo` (or jibjib make-demo) first",
              file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="jibjib-review-shot-") as scratch:
        scratch = Path(scratch)
        analysis = demo_analysis(scratch)
        subprocess.run([sys.executable, "-m", "jibjib", "review", "--analysis", str(analysis), "--out",
                        str(scratch / "review"), "--title", "Review: demo soundscapes"], check=True, cwd=REPO)
        (scratch / "profile").mkdir()
        screenshot(scratch / "review" / "index.html", OUTPUT, scratch / "profile")
    print(f"make_review_screenshot: wrote {OUTPUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
