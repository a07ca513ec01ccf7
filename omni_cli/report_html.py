"""`report.html`: one self-contained page of an `omni eval` run, to read and to listen to.

Everything is inside the page (plots as PNG, the questions and the spoken answers as Ogg/Opus
data URIs, a little script), so it opens from disk with no network. Above: the summary table,
each figure's definition and the plots. Below: one row per item with the question's player and
reference, then for each condition what it heard and its answer (text and player), side by side,
then each latency and score, the conditions side by side (a figure no condition has is left out). Columns sort by a click on their header; checkboxes show or hide conditions, and a
box filters the items by text; a view can be linked (`report.html#sort=<column>&dir=down&filter=<text>`). Every text from users or models is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

# figures shown per condition in an item's row: (metric key, short label, scale, digits)
ITEM_FIGURES = (
    ("first_audio_latency_s", "first audio s", 1, 2),
    ("wer", "WER %", 100, 0),
    ("asr_wer", "ASR-WER %", 100, 0),
    ("chrf_vs_cascade", "chrF", 1, 0),
    ("answer_words", "words", 1, 0),
    ("longest_pause_s", "longest wait s", 1, 2),
    ("dnsmos_ovrl", "DNSMOS", 1, 2),
    ("judge_score", "judge 1-5", 1, 0),
)

SCRIPT = """
window.addEventListener('error', e => { document.body.dataset.error = String(e.message); });
function cellValue(row, col) {
  const v = row.children[col].dataset.v;
  return v === undefined ? row.children[col].textContent.trim().toLowerCase() : (v === '' ? null : Number(v));
}
function sortBy(th) {
  const table = th.closest('table'), body = table.tBodies[0];
  const col = Array.from(th.parentNode.children).indexOf(th);
  const up = th.dataset.dir !== 'up';
  table.querySelectorAll('th').forEach(h => delete h.dataset.dir);
  th.dataset.dir = up ? 'up' : 'down';
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {  // items without the figure (failed, not run) stay last either way
    const x = cellValue(a, col), y = cellValue(b, col);
    if (x === null || y === null) return (x === null) - (y === null);
    return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1);
  });
  rows.forEach(r => body.appendChild(r));
  document.body.dataset.sorted = th.textContent.trim();
}
function showCondition(box) {
  document.querySelectorAll('[data-condition="' + CSS.escape(box.value) + '"]').forEach(el => { el.hidden = !box.checked; });
}
function filterItems(text) {
  const needle = text.toLowerCase();
  let shown = 0;
  document.querySelectorAll('#items tbody tr').forEach(r => { r.hidden = !r.textContent.toLowerCase().includes(needle); shown += !r.hidden; });
  document.body.dataset.shown = shown;
}
document.addEventListener('DOMContentLoaded', () => {
  document.querySelectorAll('#items thead th.sort').forEach(th => th.addEventListener('click', () => sortBy(th)));
  document.querySelectorAll('input.condition').forEach(b => b.addEventListener('change', () => showCondition(b)));
  document.getElementById('filter').addEventListener('input', e => filterItems(e.target.value));
  const players = document.querySelectorAll('audio');
  let playable = 0, broken = 0;
  players.forEach(a => {
    a.addEventListener('loadedmetadata', () => { document.body.dataset.playable = ++playable; });
    a.addEventListener('error', () => { document.body.dataset.broken = ++broken; });
  });
  // a view can be linked: report.html#sort=<column>&dir=down&filter=<text>
  const want = new URLSearchParams(location.hash.slice(1));
  if (want.get('sort')) {
    const th = Array.from(document.querySelectorAll('#items thead th.sort')).find(h => h.textContent.trim() === want.get('sort'));
    if (th) { sortBy(th); if (want.get('dir') === 'down') sortBy(th); }
  }
  if (want.get('filter')) { const box = document.getElementById('filter'); box.value = want.get('filter'); filterItems(box.value); }
  document.body.dataset.ready = players.length;
});
"""

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; }
th.sort { cursor: pointer; background: #f3f3f3; }
#items thead th { position: sticky; top: 0; background: #f3f3f3; }
th[data-dir=up]::after { content: ' \\25B2'; } th[data-dir=down]::after { content: ' \\25BC'; }
td.text { min-width: 14em; max-width: 26em; } td.num { text-align: right; white-space: nowrap; }
audio { width: 13em; height: 2em; }
dt { font-weight: bold; } dd { margin: 0 0 0.4em 1.2em; }
.err { color: #b00; } .muted { color: #777; }
"""


def _esc(text) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _audio_uri(path: Path) -> str | None:
    """A data URI of `path` (an answer kept as Ogg/Opus, or a question in any format we read)."""
    from omni_cli.audio import SAMPLE_RATE, load_audio, opus_bytes

    try:
        data = path.read_bytes() if path.suffix == ".ogg" else opus_bytes(load_audio(path), SAMPLE_RATE)
    except Exception:  # noqa: BLE001 - a question that cannot be read has no player, the row stays
        return None
    return "data:audio/ogg;base64," + base64.b64encode(data).decode()


def _player(uri: str | None) -> str:
    return f'<audio controls preload="metadata" src="{uri}"></audio>' if uri else '<span class="muted">no audio</span>'


def _num(value, scale: float, digits: int, attrs: str) -> str:
    """A numeric cell (`attrs` first, then its class and sort value)."""
    if value is None:
        return f'<td {attrs} class="num" data-v="">-</td>'
    return f'<td {attrs} class="num" data-v="{value * scale:.6g}">{value * scale:.{digits}f}</td>'


def render(summary: dict, rows: list[dict], out: Path, plots: list[str], definitions: dict[str, str],
           table: tuple[list[str], list[list[str]]], intro: str) -> str:
    from sacrebleu.metrics import CHRF

    conditions = list(summary["conditions"])
    by_item: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_item.setdefault(r["id"], {})[r["condition"]] = r
    chrf = CHRF()
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', "<title>omni eval</title>",
             f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>", "<h1>omni eval</h1>",
             f"<p>{_esc(intro)}</p>"]
    header, body = table
    parts.append("<table id=\"summary\"><thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr></thead><tbody>")
    parts += ["<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in body]
    parts.append("</tbody></table>")
    parts.append("<details><summary>What each figure means</summary><dl>")
    parts += [f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in definitions.items()]
    parts.append("</dl></details>")
    for name in plots:
        png = (out / name).read_bytes()
        parts.append(f'<img alt="{_esc(Path(name).stem)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">')

    # the answers side by side first, then each figure side by side; a figure no condition has is left out
    metrics_of: dict[tuple[str, str], dict] = {}
    for item_id, mine in by_item.items():
        cascade_text = (mine.get("cascade") or {}).get("text")
        for c, r in mine.items():
            metrics = dict(r.get("metrics") or {})
            if r.get("mode") != "cascade" and cascade_text and r.get("text") and not r.get("error"):
                metrics["chrf_vs_cascade"] = chrf.sentence_score(r["text"], [cascade_text]).score
            metrics_of[(item_id, c)] = metrics
    figures = [(key, label, scale, digits, c) for key, label, scale, digits in ITEM_FIGURES for c in conditions
               if any(m.get(key) is not None for (_, cond), m in metrics_of.items() if cond == c)]

    parts.append("<h2>Items</h2><p>")
    parts += [f'<label><input type="checkbox" class="condition" value="{_esc(c)}" checked> {_esc(c)}</label> '
              for c in conditions]
    parts.append('<input id="filter" type="search" placeholder="filter items by text"></p>')
    parts.append('<table id="items"><thead><tr><th class="sort">item</th><th>question</th>')
    for c in conditions:
        attr = f'data-condition="{_esc(c)}"'
        parts.append(f"<th {attr}>{_esc(c)}: heard</th><th {attr}>{_esc(c)}: answer</th>")
    parts += [f'<th class="sort" data-condition="{_esc(c)}">{_esc(c)}: {_esc(label)}</th>' for _, label, _, _, c in figures]
    parts.append("</tr></thead><tbody>")
    question_uris: dict[str, str | None] = {}
    for item_id, mine in by_item.items():
        first = next(iter(mine.values()))
        audio = first.get("audio")
        if audio not in question_uris:
            question_uris[audio] = _audio_uri(Path(audio)) if audio else None
        reference = first.get("reference")
        cells = [f'<td title="{_esc(item_id)}">{_esc(Path(item_id).name or item_id)}'
                 f'<span hidden>{_esc(item_id)}</span></td>',
                 f"<td>{_player(question_uris[audio])}"
                 + (f"<br><span class=\"muted\">{_esc(reference)}</span>" if reference else "") + "</td>"]
        for c in conditions:
            attr = f'data-condition="{_esc(c)}"'
            r = mine.get(c)
            if r is None or r.get("error"):
                message = "not run" if r is None else r["error"]
                cells.append(f'<td {attr} class="text err">{_esc(message)}</td><td {attr}></td>')
                continue
            kept = r.get("answer_audio")
            uri = _audio_uri(out / kept) if kept else None
            cells.append(f'<td {attr} class="text">{_esc(r.get("transcript"))}</td>')
            cells.append(f'<td {attr} class="text">{_esc(r.get("text"))}<br>{_player(uri)}</td>')
        for key, _, scale, digits, c in figures:  # one cell per column, failed ones too: sorting counts them
            r = mine.get(c)
            value = None if r is None or r.get("error") else metrics_of[(item_id, c)].get(key)
            cells.append(_num(value, scale, digits, f'data-condition="{_esc(c)}" data-figure="{key}"'))
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table></body></html>")
    return "\n".join(parts) + "\n"
