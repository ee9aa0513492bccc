"""The review page's HTML: one static file, its styles, script and data inline, that works from file://.

Nothing is fetched from a network (no fonts, scripts or styles from elsewhere):
the page's only other files are its clips and spectrograms, beside it. The
data (`PageData`) sits in a `<script type="application/json">` element; the
script builds the page from it with DOM calls (text set as text, so no name
can inject markup).

A reviewer marks each detection yes, no or unsure. Marks are kept in the
browser's localStorage under `jibjib-review:<page id>` (the page id is a hash
of the items, so two pages keep their marks apart and a rebuilt page with
other items starts afresh) and survive closing the page. "Download
verifications.csv" saves the marked detections, `file, start, end, label,
score, verdict` (RFC 4180 quoting), in the page's order; the page's
`jibjibVerificationsCsv()` returns the same text.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

STORAGE_PREFIX = "jibjib-review:"


@dataclass(frozen=True)
class PageData:
    title: str
    items: list[dict[str, Any]]  # id, label, kind, score_bin, bin_low, bin_high, file, start, end, score, site,
    #                              recorded_at, clip, image, note
    species: list[dict[str, Any]]  # label, detections, low, high
    settings: dict[str, Any]

    @property
    def page_id(self) -> str:
        keys = [[i["file"], i["start"], i["end"], i["label"]] for i in self.items]
        return hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:16]


def _json_for_html(data: Any) -> str:
    """JSON that cannot end its <script> element (<, > and & escaped as JSON allows)."""
    return (json.dumps(data, ensure_ascii=False, sort_keys=True)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def page_html(data: PageData) -> str:
    payload = {"page_id": data.page_id, "title": data.title, "items": data.items, "species": data.species,
               "settings": data.settings, "storage_key": STORAGE_PREFIX + data.page_id}
    return (_TEMPLATE.replace("__TITLE__", _escape(data.title))
            .replace("__DATA__", _json_for_html(payload)))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2327;
         background: #f4f5f7; }
  header { position: sticky; top: 0; z-index: 2; background: #1d3b2a; color: #fff; padding: 10px 18px;
           display: flex; flex-wrap: wrap; gap: 12px; align-items: center; }
  header h1 { font-size: 18px; margin: 0 12px 0 0; font-weight: 600; }
  header .progress { font-size: 14px; opacity: .9; }
  header button { font: inherit; font-size: 14px; border: 0; border-radius: 4px; padding: 6px 12px; cursor: pointer; }
  #export { background: #f0c040; color: #1d2327; font-weight: 600; }
  #clear { background: #d9dde1; color: #1d2327; }
  nav { padding: 8px 18px; font-size: 14px; background: #fff; border-bottom: 1px solid #d9dde1; }
  nav a { margin-right: 12px; color: #1d5b3a; }
  main { padding: 8px 18px 40px; }
  section h2 { font-size: 17px; margin: 22px 0 4px; }
  section p.about { margin: 0 0 8px; font-size: 13px; color: #50575e; }
  .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 12px; }
  .card { background: #fff; border: 1px solid #d9dde1; border-radius: 6px; padding: 8px; }
  .card.yes { border-color: #2e7d32; box-shadow: 0 0 0 2px #2e7d3244; }
  .card.no { border-color: #c62828; box-shadow: 0 0 0 2px #c6282844; }
  .card.unsure { border-color: #b08800; box-shadow: 0 0 0 2px #b0880044; }
  .card img { width: 100%; height: 140px; object-fit: fill; display: block; background: #000; border-radius: 3px; }
  .card audio { width: 100%; margin-top: 6px; }
  .meta { font-size: 12px; line-height: 1.45; margin-top: 4px; word-break: break-all; }
  .meta b { font-size: 14px; }
  .kind { display: inline-block; font-size: 11px; padding: 1px 6px; border-radius: 8px; background: #e6ecef;
          margin-right: 6px; }
  .verdicts { display: flex; gap: 6px; margin-top: 6px; }
  .verdicts label { flex: 1; text-align: center; border: 1px solid #c3c8cd; border-radius: 4px; padding: 4px 0;
                    cursor: pointer; font-size: 14px; user-select: none; }
  .verdicts input { margin-right: 4px; }
  .note { color: #c62828; font-size: 12px; }
</style>
</head>
<body>
<header>
  <h1 id="title"></h1>
  <span class="progress" id="progress"></span>
  <button id="export" type="button">Download verifications.csv</button>
  <button id="clear" type="button">Clear marks</button>
</header>
<nav id="species-nav"></nav>
<main id="species"></main>
<script type="application/json" id="review-data">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("review-data").textContent);
const VERDICTS = ["yes", "no", "unsure"];
let marks = {};
try { marks = JSON.parse(localStorage.getItem(DATA.storage_key) || "{}") || {}; } catch (e) { marks = {}; }

function element(tag, attributes, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function save() {
  localStorage.setItem(DATA.storage_key, JSON.stringify(marks));
  const done = DATA.items.filter(item => marks[item.id]).length;
  document.getElementById("progress").textContent = done + " of " + DATA.items.length + " detections marked";
}

function card(item) {
  const box = element("div", {"class": "card", "id": "item-" + item.id, "data-id": item.id});
  if (item.image) box.appendChild(element("img", {"src": item.image, "alt": "spectrogram of " + item.label}));
  if (item.clip) box.appendChild(element("audio", {"src": item.clip, "controls": "", "preload": "metadata"}));
  if (item.note) box.appendChild(element("div", {"class": "note"}, item.note));
  const meta = element("div", {"class": "meta"});
  const kind = item.kind === "top" ? "top score" :
    "sample, scores " + item.bin_low.toFixed(3) + "\u2013" + item.bin_high.toFixed(3);
  meta.appendChild(element("span", {"class": "kind"}, kind));
  meta.appendChild(element("b", {}, "score " + item.score));
  meta.appendChild(element("div", {}, item.file + "  " + item.start + "\u2013" + item.end + " s"));
  meta.appendChild(element("div", {}, (item.site ? "site " + item.site + " \u00b7 " : "") +
    (item.recorded_at ? item.recorded_at.replace("T", " ") : "recorder time unknown")));
  box.appendChild(meta);
  const choices = element("div", {"class": "verdicts"});
  for (const verdict of VERDICTS) {
    const label = element("label", {"class": "verdict-" + verdict});
    const input = element("input", {"type": "radio", "name": "verdict-" + item.id, "value": verdict});
    input.checked = marks[item.id] === verdict;
    input.addEventListener("change", () => { marks[item.id] = verdict; box.className = "card " + verdict; save(); });
    label.appendChild(input);
    label.appendChild(document.createTextNode(verdict));
    choices.appendChild(label);
  }
  if (marks[item.id]) box.className = "card " + marks[item.id];
  box.appendChild(choices);
  return box;
}

function render() {
  document.getElementById("title").textContent = DATA.title;
  const nav = document.getElementById("species-nav"), main = document.getElementById("species");
  nav.textContent = ""; main.textContent = "";
  if (DATA.species.length === 0) main.appendChild(element("p", {}, "No detections to review."));
  DATA.species.forEach((species, index) => {
    const id = "species-" + index;
    nav.appendChild(element("a", {"href": "#" + id}, species.label));
    const section = element("section", {"id": id});
    section.appendChild(element("h2", {}, species.label));
    section.appendChild(element("p", {"class": "about"}, species.detections + " detections, scores " +
      species.low.toFixed(3) + "\u2013" + species.high.toFixed(3) + ": the " + DATA.settings.top +
      " best and " + DATA.settings.per_bin + " at random from each of " + DATA.settings.score_bins +
      " score bins (seed " + DATA.settings.seed + ")"));
    const grid = element("div", {"class": "grid"});
    DATA.items.filter(item => item.label === species.label).forEach(item => grid.appendChild(card(item)));
    section.appendChild(grid);
    main.appendChild(section);
  });
  save();
}

function csvCell(value) {
  const text = String(value);
  return /[",\\r\\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
}

function jibjibVerificationsCsv() {
  const lines = ["file,start,end,label,score,verdict"];
  for (const item of DATA.items) {
    if (marks[item.id]) {
      lines.push([item.file, item.start, item.end, item.label, item.score, marks[item.id]].map(csvCell).join(","));
    }
  }
  return lines.join("\\r\\n") + "\\r\\n";
}

document.getElementById("export").addEventListener("click", () => {
  const url = URL.createObjectURL(new Blob([jibjibVerificationsCsv()], {type: "text/csv"}));
  const link = element("a", {"href": url, "download": "verifications.csv"});
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
});

document.getElementById("clear").addEventListener("click", () => {
  if (confirm("Clear every mark on this page?")) { marks = {}; render(); }
});

render();
</script>
</body>
</html>
"""
