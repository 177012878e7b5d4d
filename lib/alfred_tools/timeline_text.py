"""``alfred-jobs timeline ID``: a job's timeline (``GET /api/jobs/{id}/timeline``) as text.

One line per span, its bar placed and sized to scale on the job's wall time, then its duration,
tokens and cost; the attempts and how each ended above, the totals and any cancel below.
"""

from __future__ import annotations

from typing import Any

from alfred_jobs.domain.events import parse_iso

SPAN_NAMES = {"queued": "queued", "think": "thinking", "waiting": "waiting for you", "backoff": "backoff",
              "reply": "reply"}
ENDED = {"completed": "completed", "crashed": "crashed (its worker died or was cut off)",
         "handed_on": "handed on (out of invocation time)", "fenced": "fenced (ended under it)",
         "waiting": "asked you, and waited", "cancelled": "cancelled", "failed": "failed", None: "running"}


def duration(seconds: float) -> str:
    """``0.4 s``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def tokens(usage: dict[str, Any] | None) -> str:
    """``1,200 in · 300 out · 900 cached`` (cache writes when there are any)."""
    if not usage:
        return ""
    parts = [f"{usage.get('input_tokens', 0):,} in", f"{usage.get('output_tokens', 0):,} out"]
    if usage.get("cache_read_tokens"):
        parts.append(f"{usage['cache_read_tokens']:,} cached")
    if usage.get("cache_write_tokens"):
        parts.append(f"{usage['cache_write_tokens']:,} cache-written")
    return " · ".join(parts)


def money(cost: float | None) -> str:
    return "" if cost is None else f"${cost:.4f}" if cost < 1 else f"${cost:.2f}"


def span_name(span: dict[str, Any]) -> str:
    if span["kind"] == "step":
        return f"step {span.get('index')} {span.get('label') or ''}".rstrip()
    return SPAN_NAMES.get(span["kind"], span["kind"])


def bar(start: float, length: float, wall: float, width: int, fill: str) -> str:
    """A bar at ``start`` of ``length`` seconds on a line of ``width`` cells for ``wall`` seconds;
    at least one cell, so a short span still shows."""
    if wall <= 0:
        return fill.ljust(width)
    left = min(width - 1, int(start / wall * width))
    cells = max(1, min(width - left, round(length / wall * width)))
    return (" " * left + fill * cells).ljust(width)


def render(tl: dict[str, Any], *, width: int = 32, fill: str = "█") -> str:
    """The timeline as lines of text."""
    totals = tl["totals"]
    wall = float(totals["wall_s"])
    spans = tl["spans"]
    t0 = parse_iso(spans[0]["started_at"]) if spans else 0.0
    lines = [f"job {tl['job_id']}  {tl['status']}  ·  {duration(wall)} in all, {duration(totals['queued_s'])} "
             f"queued, {duration(totals['waiting_s'])} waiting for you"]
    for a in tl["attempts"]:
        lines.append(f"attempt {a['attempt']}: {ENDED.get(a['ended'], a['ended'])}")
    names = [f"{span_name(s)} (#{s['attempt']})" for s in spans]
    pad = min(34, max((len(n) for n in names), default=0))
    for s, name in zip(spans, names, strict=True):
        start = parse_iso(s["started_at"]) - t0
        dur = float(s.get("duration_s", 0.0))
        cells = bar(start, dur, wall, width, fill)
        extra = "  ".join(x for x in (tokens(s.get("usage")), money(s.get("cost_usd"))) if x)
        lines.append(f"  {name[:pad]:<{pad}}  |{cells}|  {duration(dur):>9}  {extra}".rstrip())
    if tl.get("cancel"):
        c = tl["cancel"]
        by = f" by job {c['by']}" if c.get("by") else ""
        lines.append(f"cancelled: {'you asked' if c['reason'] == 'requested' else c['reason']}{by}")
    usage = totals.get("usage") or {}
    if usage.get("input_tokens") or usage.get("output_tokens"):
        model = f" ({usage['model']})" if usage.get("model") else ""
        lines.append(f"tokens: {tokens(usage)}{model}  ·  cost {money(totals.get('cost_usd'))}")
    return "\n".join(lines)
