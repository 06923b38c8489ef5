"""The run report: OUT/report.html, one self-contained page with plots and a few clips.

This module owns the page: the run's summary (run.json), then plots drawn with
matplotlib's Agg backend (no display) and embedded as PNG data URIs: throughput over
time (audio committed against the parts' commit times), duration and characters-per-
second histograms, hours per speaker and per voice, the QC metrics' distributions and
failures by metric (when rows have QC verdicts, their own or `synth rescore`'s), error rows
by reason, a book's chapters with their ACX results, and a few
playable example clips embedded as data URIs too. Nothing on the page is fetched: it
opens without network access. The numbers come from `synth.export.stats`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time

from synth.export.stats import OutputStats
from synth.pipeline.output import REPORT_FILE, RUN_RECORD
from synth.store.store import Store

FIGSIZE_IN = (6.4, 3.2)
DPI = 80


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _figure(title: str, xlabel: str, ylabel: str):
    # A bare Figure draws with the Agg canvas: no pyplot, no display, nothing global to close.
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE_IN)
    ax = fig.subplots()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig, ax


def _histogram(values: list[float], title: str, xlabel: str) -> str:
    fig, ax = _figure(title, xlabel, "rows")
    ax.hist(values, bins=min(40, max(5, len(values) // 4)) if values else 5, color="#4c72b0")
    return _png(fig)


def _bars(counts: dict, title: str, ylabel: str, *, limit: int = 30) -> str:
    items = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    fig, ax = _figure(title, "", ylabel)
    ax.bar([str(k)[:40] for k, _ in items], [v for _, v in items], color="#55a868")
    ax.tick_params(axis="x", labelrotation=45 if len(items) > 4 else 0)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right" if len(items) > 4 else "center")
    return _png(fig)


def _throughput(stats: OutputStats) -> str:
    span_s = stats.commits[-1][0] - stats.commits[0][0] if stats.commits else 0.0
    unit, per = ("hours", 3600) if span_s > 3 * 3600 else ("minutes", 60) if span_s > 180 else ("seconds", 1)
    fig, ax = _figure("Throughput: audio committed over time", f"{unit} since the first commit", "audio hours")
    if stats.commits:
        start = stats.commits[0][0]
        total, xs, ys = 0.0, [], []
        for when, seconds in stats.commits:
            total += seconds
            xs.append((when - start) / per)
            ys.append(total / 3600)
        ax.step(xs, ys, where="post", color="#c44e52")
        ax.plot(xs, ys, "o", markersize=3, color="#c44e52")
    return _png(fig)


def plots(stats: OutputStats) -> list[tuple[str, str]]:
    """(title, PNG base64) of every plot the output's columns allow."""
    out = [
        ("Throughput over time", _throughput(stats)),
        ("Durations", _histogram(stats.durations.values, "Turn durations", "seconds")),
        ("Characters per second", _histogram(stats.chars_per_s.values, "Speaking rate", "characters per second")),
        ("Hours per speaker", _bars({f"speaker {k}": v / 3600 for k, v in stats.seconds_by_speaker.items()},
                                    "Audio per speaker", "hours")),
        ("Hours per voice", _bars({k: v / 3600 for k, v in stats.seconds_by_voice.items()}, "Audio per voice",
                                  "hours")),
        ("Stop reasons", _bars(dict(stats.stop_reasons), "Why generation stopped", "rows")),
    ]
    for metric, reservoir in sorted(stats.qc_metrics.items()):
        out.append((f"QC: {metric}", _histogram(reservoir.values, f"QC metric: {metric}", metric)))
    if stats.has_qc:
        out.append(("QC failures by metric", _bars(dict(stats.qc_failed_by_metric) or {"(no failures)": 0},
                                                   f"QC: {stats.qc_rows - stats.qc_passed} of {stats.qc_rows} rows "
                                                   "failed, by metric", "rows")))
    if stats.error_reasons:
        out.append(("Error rows by reason", _bars(dict(stats.error_reasons), "Error rows by reason", "rows")))
    return out


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value)


def _audio_mime(data: bytes) -> str:
    return "audio/flac" if data[:4] == b"fLaC" else "audio/wav"


def report_html(output: Store, stats: OutputStats) -> str:
    """The whole page."""
    run = output.read_record(RUN_RECORD) or {}
    esc = html.escape
    summary_keys = ("scripts", "scripts_ok", "scripts_with_errors", "scripts_in_failed_shards", "shards",
                    "shards_done", "turns_generated", "error_rows", "audio_hours", "wall_seconds", "x_real_time")
    summary = "".join(f"<tr><th>{esc(k)}</th><td>{esc(_number(run[k]))}</td></tr>" for k in summary_keys
                      if k in run)
    if not summary:
        summary = ("<tr><td>an import of recordings: nothing was generated</td></tr>" if output.layout.kind == "import"
                   else "<tr><td>no run.json: the run has not finished</td></tr>")
    rescored = (f" ({stats.qc_rescored_rows} verdicts from <code>synth rescore</code>, where data/ has none)"
                if stats.qc_rescored_rows else "")
    qc_line = (f"<p>QC: {stats.qc_passed} of {stats.qc_rows} rows passed{rescored}.</p>" if stats.has_qc
               else "<p>QC: not measured (no QC verdicts in data/ or from <code>synth rescore</code>).</p>")
    origin = (f"<p>Rows: {stats.rows_generated} generated, {stats.rows_recorded} recorded "
              f"(imported by <code>synth import</code>).</p>")
    acx = (lambda c: "pass" if c["acx"].get("passes") else esc("FAIL: " + "; ".join(c["acx"].get("reasons") or [])))
    chapters = "".join(f"<tr><td>{c['number']}</td><td>{esc(str(c['title']))}</td><td>{c['duration_s'] or 0:.1f} s</td>"
                       f"<td>{acx(c)}</td></tr>" for c in stats.chapters)
    chapters_html = (f"<h2>Chapters</h2><table><tr><th>chapter</th><th>title</th><th>duration</th><th>ACX</th></tr>"
                     f"{chapters}</table>" if chapters else "")
    figures = "\n".join(f'<img alt="{esc(title)}" title="{esc(title)}" src="data:image/png;base64,{png}">'
                        for title, png in plots(stats))
    clips = "\n".join(
        f'<li><code>{esc(row_id)}</code> {esc(text)}<br><audio controls preload="none" '
        f'src="data:{_audio_mime(data)};base64,{base64.b64encode(data).decode()}"></audio></li>'
        for row_id, text, data in stats.examples)
    failed = run.get("shards_failed") or {}
    failed_html = "".join(f"<li>shard {esc(k)}: {esc(v)}</li>" for k, v in failed.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>synth run report: {esc(output.uri)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1400px; }}
table {{ border-collapse: collapse; }} th, td {{ border: 1px solid #ccc; padding: 2px 8px; text-align: left; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 1em; }}
</style></head>
<body>
<h1>synth run report</h1>
<p><code>{esc(output.uri)}</code>, written {time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}.
{stats.rows} turns, {stats.audio_seconds / 3600:.4f} h of audio, {stats.error_rows} error rows.</p>
<h2>Run</h2><table>{summary}</table>
{origin}
{qc_line}
{chapters_html}
{f"<h2>Failed shards</h2><ul>{failed_html}</ul>" if failed_html else ""}
<h2>Plots</h2><div class="plots">
{figures}
</div>
<h2>Examples</h2><ul>{clips or "<li>no rows</li>"}</ul>
</body></html>
"""


def write_report(output: Store, stats: OutputStats) -> str:
    """Write OUT/report.html; returns its name."""
    output.write(REPORT_FILE, report_html(output, stats).encode())
    return REPORT_FILE
