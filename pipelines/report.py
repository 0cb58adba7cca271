"""`report.html`: one self-contained page (inline SVG charts) for a person to look at a labeling run.

Written on the driver after the pipeline, from `conversations.jsonl` (streamed: memory stays bounded by the number of
calls plotted). It shows the run's counters, the emotion distribution over all calls, and, for the first calls by id
(20 by default), a table of each speaker's dominant emotion, a chart of each speaker's emotion per turn and the turns
themselves with their labels (read from utterances.jsonl, skipped when that file is over 256 MB).
"""

from __future__ import annotations

import heapq
import html
import io
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

from apache_beam.io.filesystems import FileSystems


TURNS_MAX_BYTES = 256 << 20


def read_summaries(path: str) -> Iterator[dict[str, Any]]:
    with FileSystems.open(path) as fh:
        for line in io.TextIOWrapper(fh, encoding="utf-8"):
            if line.strip():
                yield json.loads(line)


COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    """Inline SVG: drawn as text in microseconds, where a matplotlib PNG took ~0.1 s per chart (docs/BENCHMARKS.md)."""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="{html.escape(label)}" font-family="sans-serif" font-size="11">{"".join(body)}</svg>')


def _text(x: float, y: float, text: str, anchor: str = "end", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {extra}>{html.escape(text)}</text>'


def distribution_chart(counts: Counter, labels: list[str]) -> str:
    """Utterances per emotion over all calls, as horizontal bars."""
    left, bar, width = 90, 18, 360
    top = max(counts.values(), default=0) or 1
    body = []
    for i, name in enumerate(labels):
        y, n = 6 + i * (bar + 4), counts.get(name, 0)
        body += [_text(left - 6, y + bar - 5, name),
                 f'<rect x="{left}" y="{y}" width="{width * n / top:.1f}" height="{bar}" fill="{COLORS[0]}"/>',
                 _text(left + width * n / top + 4, y + bar - 5, str(n), "start")]
    return _svg(left + width + 60, 10 + len(labels) * (bar + 4), body, "emotion distribution")


def trajectory_chart(summary: dict[str, Any], labels: list[str]) -> str:
    """Each speaker's label per turn: x = utterance index, y = emotion (in the model's label order)."""
    left, top, row_h, plot_w, legend_w = 80, 22, 22, 460, 190
    turns = max((i for info in summary["speakers"] for i, _ in info["trajectory"]), default=0)
    step = plot_w / max(turns, 1)
    height = top + row_h * len(labels) + 24
    body = [_text(left, 14, summary["conversation_id"], "start", 'font-weight="bold"')]
    for r, name in enumerate(labels):
        y = top + row_h * r + row_h / 2
        body += [_text(left - 8, y + 4, name),
                 f'<line x1="{left}" y1="{y}" x2="{left + plot_w}" y2="{y}" stroke="#ddd"/>']
    body.append(_text(left + plot_w / 2, height - 4, "utterance", "middle"))
    row = {name: i for i, name in enumerate(labels)}
    for k, info in enumerate(summary["speakers"]):
        color = COLORS[k % len(COLORS)]
        points = [(left + i * step, top + row_h * row[label] + row_h / 2) for i, label in info["trajectory"]]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        body.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        body += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"/>' for x, y in points]
        ly = top + 14 * k + 4
        name = f"{info['speaker']} ({info['role']})" if info.get("role") else info["speaker"]  # no role: none shown
        body += [f'<rect x="{left + plot_w + 16}" y="{ly}" width="10" height="10" fill="{color}"/>',
                 _text(left + plot_w + 30, ly + 9, name, "start")]
    return _svg(left + plot_w + legend_w, height, body, f"emotion trajectory of {summary['conversation_id']}")


def _table(rows: list[list[str]], head: list[str]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def turns_of(utterances_path: str, ids: set[str]) -> dict[str, list[dict[str, Any]]]:
    """The utterance rows of a few calls, streamed from utterances.jsonl (empty when the file is too big to scan)."""
    if not utterances_path or not FileSystems.exists(utterances_path):
        return {}
    if FileSystems.match([utterances_path])[0].metadata_list[0].size_in_bytes > TURNS_MAX_BYTES:
        return {}
    turns: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    for row in read_summaries(utterances_path):
        if row["conversation_id"] in turns:
            turns[row["conversation_id"]].append(row)
    return {i: sorted(rows, key=lambda r: r["index"]) for i, rows in turns.items()}


def write_report(conversations_path: str, out_path: str, labels: list[str], counters: dict[str, int],
                 title: str = "bioserc labeling run", max_calls: int = 20, utterances_path: str | None = None) -> int:
    """Write the report; return how many calls were plotted.

    Args:
        conversations_path: the run's conversations.jsonl (local or gs://).
        labels: the model's labels, which fix the y axis order; labels found only in the data are appended.
        counters: the pipeline's counters, shown as a table.
        utterances_path: the run's utterances.jsonl, for the turns of the plotted calls.
    """
    totals: Counter = Counter()
    n_calls = 0
    first = []
    for summary in read_summaries(conversations_path):
        n_calls += 1
        totals.update(summary["emotion_counts"])
        first.append(summary)
        if len(first) > max_calls:  # keep the max_calls smallest ids without holding every summary
            first = heapq.nsmallest(max_calls, first, key=lambda s: s["conversation_id"])
    first = sorted(first, key=lambda s: s["conversation_id"])[:max_calls]
    axis = list(labels) + sorted(set(totals) - set(labels))
    parts = [f"<h1>{html.escape(title)}</h1>",
             _table(sorted([k, v] for k, v in counters.items()), ["counter", "value"]),
             f"<h2>Emotions over {n_calls} calls</h2>"]
    if totals:
        parts.append(distribution_chart(totals, axis))
    rows = [[s["conversation_id"], s["utterances"], s["dominant_emotion"],
             "; ".join(f"{info['speaker']}: {info['dominant_emotion']}" + (
                 f" (else {info['dominant_non_neutral']})"
                 if info.get("dominant_non_neutral") not in (None, info["dominant_emotion"]) else "")
                 for info in s["speakers"])] for s in first]
    parts += [f"<h2>Calls ({len(first)} of {n_calls}, by id)</h2>",
              _table(rows, ["call", "utterances", "dominant emotion", "per speaker (dominant, else non-neutral)"])]
    turns = turns_of(utterances_path, {s["conversation_id"] for s in first}) if utterances_path else {}
    for s in first:
        parts.append(f'<h3>{html.escape(s["conversation_id"])}</h3>{trajectory_chart(s, axis)}')
        if turns.get(s["conversation_id"]):
            table = _table([[r["index"], r["speaker"], r["label"], f"{r['probs'].get(r['label'], 0):.2f}", r["text"]]
                            for r in turns[s["conversation_id"]]], ["#", "speaker", "label", "p", "text"])
            parts.append(f"<details><summary>turns</summary>{table}</details>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left;font-size:90%}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    with FileSystems.create(out_path, mime_type="text/html") as fh:
        fh.write(page.encode("utf-8"))
    return len(first)
