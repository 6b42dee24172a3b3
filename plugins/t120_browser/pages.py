"""The night browser's HTML: every string from a manifest or a FITS header is escaped here.

Plain server-side HTML (no build step), shown in Airflow's plugin iframe; links that leave
the browser (a run's page, the reprocessed run) open in the top window.
"""

from __future__ import annotations

import html
import json
import urllib.parse
from collections.abc import Iterable
from typing import Any

DAG_ID = "t120_reduce"
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:12px;color:#1a202c}
table{border-collapse:collapse;margin:6px 0 14px}td,th{border:1px solid #cbd5e0;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#edf2f7}h1{font-size:20px}h2{font-size:17px;
margin-top:20px}.failed{color:#c53030;font-weight:600}.success{color:#2f855a}
.muted{color:#718096}img.thumb{height:120px;margin:3px;border:1px solid #cbd5e0}
form{margin:8px 0}button{margin-left:6px}
"""
REPROCESS_JS = """
async function reprocess(first, last) {
  const out = document.getElementById('reprocess-result');
  out.textContent = 'Triggering ' + first + (last !== first ? ' .. ' + last : '') + ' ...';
  const response = await fetch('/api/v2/dags/__DAG__/dagRuns', {
    method: 'POST', credentials: 'same-origin',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({logical_date: null, conf: {first_night: first, last_night: last}}),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    out.textContent = 'Refused (' + response.status + '): ' + JSON.stringify(body.detail || body);
    return;
  }
  out.innerHTML = '';
  const link = document.createElement('a');
  link.href = '/dags/__DAG__/runs/' + encodeURIComponent(body.dag_run_id);
  link.target = '_top';
  link.textContent = 'Run ' + body.dag_run_id + ' queued: open it';
  out.appendChild(link);
}
""".replace("__DAG__", DAG_ID)


def e(value: Any) -> str:
    """Escaped text of any value (None as an empty string)."""
    return "" if value is None else html.escape(str(value), quote=True)


def page(title: str, body: str, base: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
        f"<style>{STYLE}</style><script>{REPROCESS_JS}</script></head><body>"
        f"<p class='muted'><a href='{e(base)}/'>Nights</a> · <a href='{e(base)}/trends'>"
        f"Trends</a></p>{body}<p id='reprocess-result' class='muted'></p></body></html>"
    )


def table(headers: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """Cells are HTML already (escape what goes in them)."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def status(value: Any) -> str:
    name = "success" if value == "success" else "failed"
    return f"<span class='{name}'>{e(value or 'unknown')}</span>"


def reprocess_button(first: str, last: str, label: str = "Reprocess") -> str:
    arguments = e(json.dumps(first)) + "," + e(json.dumps(last))
    return f"<button onclick='reprocess({arguments})'>{e(label)}</button>"


def nights_page(
    entries: list[dict[str, Any]], chosen: dict[str, str], base: str, total: int
) -> str:
    """The archive's nights, newest first, with the filter that chose them."""
    options = "".join(
        f"<option value='{v}'{' selected' if chosen.get('status') == v else ''}>{v or 'any'}"
        "</option>"
        for v in ("", "success", "failed")
    )
    form = (
        f"<form method='get' action='{e(base)}/'>status <select name='status'>{options}</select>"
        f" from <input type='date' name='first' value='{e(chosen.get('first'))}'>"
        f" to <input type='date' name='last' value='{e(chosen.get('last'))}'>"
        "<button type='submit'>Show</button></form>"
    )
    rows = []
    for entry in reversed(entries):
        night = str(entry.get("night"))
        frames = entry.get("frames") or {}
        solved = entry.get("solved") or [0, 0]
        lenders = sorted({str(n) for n in (entry.get("borrowed") or {}).values() if n})
        rows.append(
            [
                f"<a href='{e(base)}/night/{e(night)}'>{e(night)}</a>",
                status(entry.get("status")),
                e(f"{frames.get('object', 0)} / {frames.get('flat', 0)} / {frames.get('dark', 0)}"),
                e(entry.get("quarantined")),
                e(entry.get("rejected")),
                e(f"{entry.get('groups', 0)} ({entry.get('groups_failed', 0)} failed)"),
                e(entry.get("stacks")),
                e(f"{solved[0]}/{solved[1]}" if solved[1] else "-"),
                e(", ".join(lenders) or "-"),
                e(entry.get("problem") or ""),
                reprocess_button(night, night),
            ]
        )
    headers = (
        "night",
        "status",
        "science / flat / dark",
        "quarantined",
        "left out",
        "groups",
        "stacks",
        "solved",
        "calibrations from",
        "first problem",
        "",
    )
    shown = f"<p class='muted'>{len(entries)} of {total} nights.</p>"
    span = ""
    if entries:
        first, last = str(entries[0]["night"]), str(entries[-1]["night"])
        span = f"<p>{reprocess_button(first, last, f'Reprocess {first} .. {last}')}</p>"
    return page(
        "T120 nights", f"<h1>T120 nights</h1>{form}{shown}{span}" + table(headers, rows), base
    )


def night_page(night: str, manifest: dict[str, Any], pictures: list[str], base: str) -> str:
    """Everything a night's manifest says, made readable, with its pictures."""
    parts = [
        f"<h1>Night {e(night)} {status(manifest.get('status'))}</h1>",
        f"<p>{reprocess_button(night, night)} {_run_link(manifest)}</p>",
        _problems(manifest),
        _quarantined(manifest),
        _groups(manifest),
        _masters(manifest),
        _astrometry(manifest),
        _pictures(night, pictures, base),
        _products(manifest),
        _software(manifest),
    ]
    return page(f"T120 night {night}", "".join(parts), base)


def _run_link(manifest: dict[str, Any]) -> str:
    """The Airflow run that wrote the manifest (the DAG's runs when the CLI wrote it)."""
    run = manifest.get("airflow_run") or {}
    if run.get("dag_id") and run.get("run_id"):
        href = f"/dags/{urllib.parse.quote(run['dag_id'])}/runs/{urllib.parse.quote(run['run_id'])}"
        return f"<a href='{e(href)}' target='_top'>made by run {e(run['run_id'])}</a>"
    return f"<a href='/dags/{DAG_ID}/runs' target='_top'>Airflow runs of {DAG_ID}</a>"


def _problems(manifest: dict[str, Any]) -> str:
    problems = manifest.get("problems") or []
    warnings = manifest.get("warnings") or []
    items = "".join(f"<li class='failed'>{e(p)}</li>" for p in problems)
    items += "".join(f"<li>{e(w)}</li>" for w in warnings)
    return f"<h2>Problems and warnings</h2><ul>{items or '<li>none</li>'}</ul>"


def _quarantined(manifest: dict[str, Any]) -> str:
    rows = [[e(q.get("path")), e(q.get("reason"))] for q in manifest.get("quarantined") or []]
    if not rows:
        return "<h2>Quarantined files</h2><p>none</p>"
    return "<h2>Quarantined files</h2>" + table(("file", "reason"), rows)


def _groups(manifest: dict[str, Any]) -> str:
    out = ["<h2>Groups</h2>"]
    for name, group in sorted((manifest.get("groups") or {}).items()):
        stack = group.get("stack") or {}
        done = "success" if group.get("status") == "done" else group.get("status")
        out.append(f"<h3 id='{e(name)}'>{e(name)} {status(done)}</h3>")
        if group.get("error"):
            out.append(f"<p class='failed'>{e(group['error'])}</p>")
        masters = group.get("masters") or {}
        used = [
            f"{kind}: {e(m.get('file'))} (night {e(m.get('night'))}"
            + (f", {e(m.get('days'))} d" if m.get("days") is not None else "")
            + ")"
            for kind, m in sorted(masters.items())
        ]
        if used:
            out.append(f"<p>masters: {'; '.join(used)}</p>")
        if stack:
            out.append(
                f"<p>{e(stack.get('combined'))} of {e(stack.get('frames'))} frames stacked, "
                f"reference {e(stack.get('reference'))}</p>"
            )
        rows = []
        for qc in stack.get("qc") or []:
            shift = qc.get("shift") or ["", ""]
            rows.append(
                [
                    e(qc.get("path")),
                    e(qc.get("date_obs")),
                    "yes" if qc.get("stacked") else "<span class='failed'>no</span>",
                    e(qc.get("fwhm_arcsec")),
                    e(qc.get("ellipticity")),
                    e(qc.get("sky")),
                    e(qc.get("transparency")),
                    e(f"{shift[0]}, {shift[1]}"),
                    e(qc.get("matched")),
                    "reference" if qc.get("reference") else e(qc.get("reason") or ""),
                ]
            )
        if rows:
            headers = (
                "frame",
                "DATE-OBS",
                "stacked",
                'FWHM (")',
                "ellipticity",
                "sky (ADU)",
                "transparency",
                "shift (px)",
                "stars matched",
                "why left out",
            )
            out.append(table(headers, rows))
    return "".join(out)


def _masters(manifest: dict[str, Any]) -> str:
    masters = manifest.get("masters") or {}
    rows = []
    for kind in ("darks", "interpolated", "flats"):
        for name, record in sorted((masters.get(kind) or {}).items()):
            if not isinstance(record, dict):
                continue
            rows.append(
                [
                    e(kind),
                    e(record.get("file") or name),
                    e(record.get("night")),
                    e(record.get("used", record.get("frames"))),
                    e(record.get("level_adu")),
                    e(record.get("noise_adu", record.get("noise"))),
                    e("; ".join(f"{k}: {v}" for k, v in (record.get("left_out") or {}).items())),
                    e(_versus(record.get("vs_previous"))),
                ]
            )
    for name, record in sorted(
        ((manifest.get("calibrations") or {}).get("borrowed") or {}).items()
    ):
        rows.append(
            [
                "borrowed",
                e(record.get("file") or name),
                e(record.get("night")),
                e(record.get("frames")),
                e(record.get("level_adu")),
                e(record.get("noise")),
                e(record.get("why")),
                "",
            ]
        )
    headers = (
        "kind",
        "master",
        "night",
        "frames",
        "level (ADU)",
        "noise",
        "left out / why",
        "against the previous flat",
    )
    return "<h2>Masters</h2>" + (table(headers, rows) if rows else "<p>none</p>")


def _versus(comparison: Any) -> str:
    """'2023-05-09: RMS 0.0045, 99.9% 0.033' (a flat against the archive's previous one)."""
    if not isinstance(comparison, dict):
        return ""
    if comparison.get("error"):
        return f"{comparison.get('night')}: {comparison['error']}"
    return f"{comparison.get('night')}: RMS {comparison.get('rms')}, 99.9% {comparison.get('p999')}"


def _pictures(night: str, pictures: list[str], base: str) -> str:
    if not pictures:
        return "<h2>Pictures</h2><p>none</p>"
    links = "".join(
        f"<a href='{e(base)}/night/{e(night)}/file/{e(urllib.parse.quote(p))}' target='_blank'>"
        f"<img class='thumb' src='{e(base)}/night/{e(night)}/file/{e(urllib.parse.quote(p))}' "
        f"alt='{e(p)}' title='{e(p)}'></a>"
        for p in pictures
    )
    return f"<h2>Pictures</h2>{links}"


def _astrometry(manifest: dict[str, Any]) -> str:
    """Each image's solve: how (full, or derived from its group's anchor and checked), the
    figures, and why it failed or why its derived WCS was refused."""
    rows = []
    for group, result in sorted((manifest.get("astrometry") or {}).items()):
        for image in result.get("images") or []:
            stats = image.get("stats") or {}
            sigma = stats.get("sigma_arcsec") or []
            check = image.get("check") or {}
            how = image.get("method") or "-"
            if how == "derived":
                how = f"derived from {image.get('anchor', '?').rsplit('/', 1)[-1]}"
            note = image.get("reason") or image.get("check_failed") or ""
            if image.get("check_failed"):
                note = f"derived WCS refused: {image['check_failed']}"
            rows.append(
                [
                    e(group),
                    e(str(image.get("image", "")).rsplit("/", 1)[-1]),
                    status(image.get("status")),
                    e(how),
                    e(image.get("solver")),
                    e(stats.get("matched_references", "-")),
                    e(f"{max(sigma):.3f}" if sigma else "-"),
                    e(check.get("reference", "-")),
                    e(note),
                ]
            )
    headers = ("group", "image", "status", "how", "solver", "stars", 'scatter "', "checked on", "")
    return "<h2>Astrometry</h2>" + (table(headers, rows) if rows else "<p>none asked</p>")


def _products(manifest: dict[str, Any]) -> str:
    rows = [
        [
            e(p.get("path")),
            e(p.get("bytes")),
            f"<code>{e(p.get('sha256'))}</code>",
            f"<code>{e(p.get('key'))}</code>",
        ]
        for p in manifest.get("products") or []
    ]
    headers = ("product", "bytes", "SHA-256", "provenance key")
    return "<h2>Products</h2>" + (table(headers, rows) if rows else "<p>none</p>")


def _software(manifest: dict[str, Any]) -> str:
    rows = [[e(k), e(v)] for k, v in sorted((manifest.get("software") or {}).items())]
    return "<h2>Software</h2>" + (table(("software", "version"), rows) if rows else "<p>-</p>")


def trends_page(first: str, last: str, base: str) -> str:
    query = urllib.parse.urlencode({k: v for k, v in (("first", first), ("last", last)) if v})
    form = (
        f"<form method='get' action='{e(base)}/trends'>from <input type='date' name='first' "
        f"value='{e(first)}'> to <input type='date' name='last' value='{e(last)}'>"
        "<button type='submit'>Draw</button></form>"
    )
    image = f"<img src='{e(base)}/trends.png?{e(query)}' alt='archive trends'>"
    return page("T120 archive trends", f"<h1>Archive trends</h1>{form}{image}", base)


def not_t120(dag_id: str, base: str) -> str:
    """The run and task tabs show on every DAG: another DAG's get this."""
    return page(
        "Not a T120 run",
        f"<p class='muted'>{e(dag_id)} is not a T120 reduction: this tab shows the nights "
        f"of {DAG_ID} runs only.</p>",
        base,
    )


def run_page(run_id: str, nights: list[str], entries: dict[str, Any], base: str) -> str:
    rows = []
    for night in nights:
        entry = entries.get(night)
        rows.append(
            [
                f"<a href='{e(base)}/night/{e(night)}'>{e(night)}</a>",
                status(entry.get("status")) if entry else "<span class='muted'>no products</span>",
                e((entry or {}).get("problem") or ""),
            ]
        )
    body = f"<h1>Nights of run {e(run_id)}</h1>" + table(("night", "status", "first problem"), rows)
    return page(f"T120 run {run_id}", body, base)


def task_page(
    night: str | None, group: str | None, manifest: dict[str, Any] | None, base: str
) -> str:
    if night is None:
        return page("T120 task", "<p class='muted'>This task is not about one night.</p>", base)
    anchor = "#" + e(group) if group else ""
    link = f"<a href='{e(base)}/night/{e(night)}{anchor}'>night {e(night)}</a>"
    if manifest is None:
        return page("T120 task", f"<p>{link}: no manifest yet.</p>", base)
    body = f"<h1>{e(group or night)}</h1><p>{link} {status(manifest.get('status'))}</p>"
    if group:
        chosen = {name: g for name, g in (manifest.get("groups") or {}).items() if name == group}
        body += _groups({"groups": chosen})
    else:
        body += _problems(manifest) + _quarantined(manifest)
    return page(f"T120 {group or night}", body, base)
