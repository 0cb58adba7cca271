"""`report.html`: one self-contained page (inline SVG charts) for a person to look at a labeling run.

Written on the driver after the pipeline, from `conversations.jsonl` (streamed: memory stays bounded by the number of
calls plotted) and archive.json's content. The archive page comes first: headline figures, the label mix of each role,
the call-score histogram and the calls most worth reviewing, each linking to its own section below. Then the run's
counters, the emotion distribution over all calls, and a section per call for the reviewed calls and the first calls
by id (20 by default): each speaker's dominant emotion, a chart of each speaker's emotion per turn, a chart of each
role's valence per turn with its escalations, the role analytics, and the turns themselves with their labels (read
from utterances.jsonl, skipped when that file is over 256 MB).
"""

from __future__ import annotations

import hashlib
import heapq
import html
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

from apache_beam.io.filesystems import FileSystems

from bioserc.analytics.valence import valence_score


TURNS_MAX_BYTES = 256 << 20


def read_summaries(path: str) -> Iterator[dict[str, Any]]:
    with FileSystems.open(path) as fh:
        for line in io.TextIOWrapper(fh, encoding="utf-8"):
            if line.strip():
                yield json.loads(line)


COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    """Inline SVG: drawn as text in microseconds, where a matplotlib PNG took ~0.1 s per chart (docs/BENCHMARKS.md)."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(label)}" font-family="sans-serif" font-size="11">{"".join(body)}</svg>'
    )


def _text(x: float, y: float, text: str, anchor: str = "end", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {extra}>{html.escape(text)}</text>'


def distribution_chart(counts: Counter, labels: list[str]) -> str:
    """Utterances per emotion over all calls, as horizontal bars."""
    left, bar, width = 90, 18, 360
    top = max(counts.values(), default=0) or 1
    body = []
    for i, name in enumerate(labels):
        y, n = 6 + i * (bar + 4), counts.get(name, 0)
        body += [
            _text(left - 6, y + bar - 5, name),
            f'<rect x="{left}" y="{y}" width="{width * n / top:.1f}" height="{bar}" fill="{COLORS[0]}"/>',
            _text(left + width * n / top + 4, y + bar - 5, str(n), "start"),
        ]
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
        body += [
            _text(left - 8, y + 4, name),
            f'<line x1="{left}" y1="{y}" x2="{left + plot_w}" y2="{y}" stroke="#ddd"/>',
        ]
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
        body += [
            f'<rect x="{left + plot_w + 16}" y="{ly}" width="10" height="10" fill="{color}"/>',
            _text(left + plot_w + 30, ly + 9, name, "start"),
        ]
    return _svg(left + plot_w + legend_w, height, body, f"emotion trajectory of {summary['conversation_id']}")


def valence_chart(summary: dict[str, Any], negative: float) -> str:
    """Each role's valence score per turn (x = utterance index, y from -1 to +1), the negative and positive
    thresholds dashed, and each escalation shaded over the turns it spans."""
    left, top, plot_w, plot_h, legend_w = 80, 10, 460, 160, 190
    a = summary["analytics"]
    turns = max((i for info in summary["speakers"] for i, _ in info["trajectory"]), default=0)
    step = plot_w / max(turns, 1)

    def y(score: float) -> float:
        return top + plot_h * (1 - score) / 2

    body = [
        f'<rect x="{left + e["first"] * step - 3:.1f}" y="{top}" width="{(e["last"] - e["first"]) * step + 6:.1f}"'
        f' height="{plot_h}" fill="#c44e52" fill-opacity="0.12"/>'
        for g in a["roles"]
        for e in g["escalations"]
    ]
    for value in (1, negative, 0, -negative, -1):
        dash = ' stroke-dasharray="4 3"' if value not in (1, 0, -1) else ""
        body += [
            f'<line x1="{left}" y1="{y(value):.1f}" x2="{left + plot_w}" y2="{y(value):.1f}" stroke="#ccc"{dash}/>',
            _text(left - 8, y(value) + 4, f"{value:+.2f}" if value else "0"),
        ]
    for k, g in enumerate(a["roles"]):
        color = COLORS[k % len(COLORS)]
        points = [
            (left + i * step, y(score))
            for info in summary["speakers"]
            if (info.get("role") or info["speaker"]) == g["group"]
            for i, score in info["valence"]
        ]
        points.sort()
        body.append(
            f'<polyline points="{" ".join(f"{px:.1f},{py:.1f}" for px, py in points)}" fill="none" '
            f'stroke="{color}" stroke-width="1.5"/>'
        )
        body += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{color}"/>' for px, py in points]
        ly = top + 14 * k + 4
        body += [
            f'<rect x="{left + plot_w + 16}" y="{ly}" width="10" height="10" fill="{color}"/>',
            _text(left + plot_w + 30, ly + 9, f"{g['group']} ({g['score']:+.2f})", "start"),
        ]
    body.append(_text(left + plot_w / 2, top + plot_h + 16, "utterance (valence; escalations shaded)", "middle"))
    return _svg(
        left + plot_w + legend_w, top + plot_h + 22, body, f"valence trajectory of {summary['conversation_id']}"
    )


def label_mix_chart(roles: dict[str, dict[str, Any]], labels: list[str]) -> str:
    """One bar per role: the share of each label among its utterances, with the counts in the legend's order."""
    left, bar, width = 90, 18, 420
    body = []
    for r, (name, info) in enumerate(roles.items()):
        y, x, total = 6 + r * (bar + 6), float(left), info["utterances"] or 1
        body.append(_text(left - 6, y + bar - 5, f"{name} ({info['utterances']})"))
        for k, label in enumerate(labels):
            n = info["labels"].get(label, 0)
            if n:
                w, tip = width * n / total, html.escape(f"{name}: {label} {n}")
                body.append(
                    f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar}" '
                    f'fill="{COLORS[k % len(COLORS)]}"><title>{tip}</title></rect>'
                )
                x += w
    ly = 10 + len(roles) * (bar + 6)
    for k, label in enumerate(labels):
        body += [
            f'<rect x="{left + 70 * (k % 6)}" y="{ly + 16 * (k // 6)}" width="10" height="10" '
            f'fill="{COLORS[k % len(COLORS)]}"/>',
            _text(left + 14 + 70 * (k % 6), ly + 9 + 16 * (k // 6), label, "start"),
        ]
    return _svg(left + width + 20, ly + 16 * (len(labels) // 6 + 1) + 4, body, "label mix by role")


def histogram_chart(edges: list[float], counts: list[int]) -> str:
    """Calls per call-score bin, as vertical bars over [-1, 1]."""
    left, top, plot_w, plot_h = 40, 14, 460, 120
    step, peak = plot_w / len(counts), max(counts, default=0) or 1
    body = [f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>']
    for i, n in enumerate(counts):
        h = plot_h * n / peak
        color = COLORS[3] if edges[i + 1] <= 0 else COLORS[2]  # negative bins red, positive green
        body.append(
            f'<rect x="{left + i * step + 1:.1f}" y="{top + plot_h - h:.1f}" width="{step - 2:.1f}" '
            f'height="{h:.1f}" fill="{color}"><title>{edges[i]:+.1f} to {edges[i + 1]:+.1f}: {n}</title>'
            "</rect>"
        )
        if n:
            body.append(_text(left + (i + 0.5) * step, top + plot_h - h - 3, str(n), "middle"))
    for i in range(0, len(edges), 5):
        body.append(_text(left + i * step, top + plot_h + 14, f"{edges[i]:+.1f}", "middle"))
    body.append(_text(left + plot_w / 2, top + plot_h + 30, "call score (calls per bin of 0.1)", "middle"))
    return _svg(left + plot_w + 20, top + plot_h + 36, body, "call-score histogram")


def call_anchor(conversation_id: str) -> str:
    """The id of a call's section: its id where that is safe in a fragment, else cleaned and made unique."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", conversation_id)
    if safe != conversation_id:
        safe += "-" + hashlib.sha256(conversation_id.encode()).hexdigest()[:8]
    return f"call-{safe}"


def _table(rows: list[list[str]], head: list[str], raw: int | None = None) -> str:
    """A table of escaped cells; column `raw` holds HTML made here (links)."""
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if i == raw else html.escape(str(c))}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{cells}</tr>{body}</table>"


def _clock(ms: int | None) -> str:
    return "" if ms is None else f"{ms // 60000}:{ms // 1000 % 60:02d}"


def archive_page(archive: dict[str, Any], labels: list[str]) -> list[str]:
    """The report's first page: what the archive holds and which calls to look at."""
    c = archive["call_scores"]
    kinds = ", ".join(f"{n} {kind.replace('_', ' ')}s" for kind, n in archive["escalations"].items()) or "none"
    mean = "n/a" if c["mean"] is None else f"{c['mean']:+.2f}"
    parts = [
        f'<h2 id="archive">Archive: {archive["calls"]} calls, {archive["utterances"]} utterances</h2>',
        f"<p>Mean call score {mean}; {archive['flagged_calls']} calls flagged for review; "
        f"{archive['calls_with_escalations']} with escalations ({html.escape(kinds)}). Thresholds: "
        f"{html.escape(json.dumps(archive['thresholds']))}.</p>",
        "<h3>Label mix by role</h3>",
        label_mix_chart(archive["roles"], labels),
        "<h3>Call scores</h3>",
        histogram_chart(c["bin_edges"], c["histogram"]),
        f"<h3>Calls to review ({len(archive['review'])} of {archive['flagged_calls']} flagged)</h3>",
    ]
    rows = [
        [
            item["rank"],
            f'<a href="#{call_anchor(item["conversation_id"])}">{html.escape(item["conversation_id"])}</a>',
            f"{item['call_score']:+.2f} ({item['scored_group']})",
            item["escalations"],
            f"turn {item['jump_to']['index']} {_clock(item['jump_to']['start_ms'])}".strip(),
            "; ".join(item["reasons"]),
        ]
        for item in archive["review"]
    ]
    parts.append(
        _table(rows, ["#", "call", "call score", "escalations", "jump to", "why"], raw=1)
        if rows
        else "<p>No call was flagged.</p>"
    )
    return parts


def _role_table(summary: dict[str, Any]) -> str:
    rows = [
        [
            g["group"],
            g["utterances"],
            f"{g['mean']:+.2f}",
            f"{g['start']:+.2f} → {g['end']:+.2f}",
            f"{g['score']:+.2f}",
            f"{g['lowest']['score']:+.2f} (turn {g['lowest']['index']})",
            g["dominant_emotion"],
            len(g["escalations"]),
        ]
        for g in summary["analytics"]["roles"]
    ]
    table = _table(rows, ["role", "turns", "mean", "start → end", "score", "lowest", "dominant", "escalations"])
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in summary["analytics"]["reasons"])
    return table + (f"<ul>{reasons}</ul>" if reasons else "")


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


def write_report(
    conversations_path: str,
    out_path: str,
    labels: list[str],
    counters: dict[str, int],
    archive: dict[str, Any],
    title: str = "bioserc labeling run",
    max_calls: int = 20,
    utterances_path: str | None = None,
) -> int:
    """Write the report; return how many calls were plotted.

    Args:
        conversations_path: the run's conversations.jsonl (local or gs://).
        labels: the model's labels, which fix the y axis order; labels found only in the data are appended.
        counters: the pipeline's counters, shown as a table.
        archive: archive.json's content, for the archive page; the calls it lists for review are plotted besides
            the first `max_calls` by id.
        utterances_path: the run's utterances.jsonl, for the turns of the plotted calls.
    """
    totals: Counter = Counter()
    n_calls = 0
    first = []
    rank = {item["conversation_id"]: item["rank"] for item in archive["review"]}
    reviewed: list[dict[str, Any]] = []
    for summary in read_summaries(conversations_path):
        n_calls += 1
        totals.update(summary["emotion_counts"])
        if summary["conversation_id"] in rank:
            reviewed.append(summary)
            continue
        first.append(summary)
        if len(first) > max_calls:  # keep the max_calls smallest ids without holding every summary
            first = heapq.nsmallest(max_calls, first, key=lambda s: s["conversation_id"])
    first = (
        sorted(reviewed, key=lambda s: rank[s["conversation_id"]])
        + sorted(first, key=lambda s: s["conversation_id"])[:max_calls]
    )
    axis = list(labels) + sorted(set(totals) - set(labels))
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        *archive_page(archive, axis),
        "<h2>Run</h2>",
        _table(sorted([k, v] for k, v in counters.items()), ["counter", "value"]),
        f"<h2>Emotions over {n_calls} calls</h2>",
    ]
    if totals:
        parts.append(distribution_chart(totals, axis))
    rows = [
        [
            f'<a href="#{call_anchor(s["conversation_id"])}">{html.escape(s["conversation_id"])}</a>',
            s["utterances"],
            s["dominant_emotion"],
            "; ".join(
                f"{info['speaker']}: {info['dominant_emotion']}"
                + (
                    f" (else {info['dominant_non_neutral']})"
                    if info.get("dominant_non_neutral") not in (None, info["dominant_emotion"])
                    else ""
                )
                for info in s["speakers"]
            ),
        ]
        for s in first
    ]
    parts += [
        f"<h2>Calls ({len(first)} of {n_calls}: {len(reviewed)} to review, then by id)</h2>",
        _table(rows, ["call", "utterances", "dominant emotion", "per speaker (dominant, else non-neutral)"], raw=0),
    ]
    turns = turns_of(utterances_path, {s["conversation_id"] for s in first}) if utterances_path else {}
    for s in first:
        parts += [
            f'<h3 id="{call_anchor(s["conversation_id"])}">{html.escape(s["conversation_id"])}</h3>',
            trajectory_chart(s, axis),
            valence_chart(s, archive["thresholds"]["negative"]),
            _role_table(s),
        ]
        if turns.get(s["conversation_id"]):
            table = _table(
                [
                    [
                        r["index"],
                        r["speaker"],
                        r["label"],
                        f"{r['probs'].get(r['label'], 0):.2f}",
                        f"{valence_score(r['probs']):+.2f}",
                        r["text"],
                    ]
                    for r in turns[s["conversation_id"]]
                ],
                ["#", "speaker", "label", "p", "valence", "text"],
            )
            parts.append(f"<details><summary>turns</summary>{table}</details>")
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left;font-size:90%}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    )
    with FileSystems.create(out_path, mime_type="text/html") as fh:
        fh.write(page.encode("utf-8"))
    return len(first)
