"""Small charts drawn on the server as inline SVG: no JavaScript, crisp at any zoom, readable
by a screen reader (every chart has a title and its numbers as text)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

UP = "#1a7f4b"
DOWN = "#b3261e"
INK = "#1f2933"
MUTED = "#6b7785"
TIER_COLOURS = {1: "#1b4f8a", 2: "#4f86c6", 3: "#a9c3e3"}


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    note: str = ""


def signed_bars(bars: Sequence[Bar], *, unit: str = "pts", title: str, width: int = 640) -> str:
    """Horizontal bars left (negative) and right (positive) of a zero line, in ``unit``."""
    if not bars:
        return f'<p class="muted">{escape(title)}: no driver with a material effect.</p>'
    label_w, value_w, row_h = 210, 86, 26
    plot_w = width - label_w - value_w
    zero = label_w + plot_w / 2
    biggest = max(abs(b.value) for b in bars) or 1.0
    scale = (plot_w / 2 - 4) / biggest
    height = row_h * len(bars) + 24
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="100%" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{zero}" y1="4" x2="{zero}" y2="{height - 18}" stroke="{MUTED}" '
        'stroke-width="1"/>',
    ]
    for i, bar in enumerate(bars):
        y = 6 + i * row_h
        length = abs(bar.value) * scale
        x = zero if bar.value >= 0 else zero - length
        colour = UP if bar.value >= 0 else DOWN
        sign = "+" if bar.value >= 0 else "−"
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" fill="{INK}" '
            f'font-size="13">{escape(_short(bar.label, 32))}</text>'
        )
        parts.append(
            f'<rect x="{x:.1f}" y="{y + 3}" width="{max(length, 1.5):.1f}" height="{row_h - 8}" '
            f'fill="{colour}" rx="2"><title>{escape(bar.note or bar.label)}</title></rect>'
        )
        parts.append(
            f'<text x="{width - 4}" y="{y + 15}" text-anchor="end" fill="{colour}" '
            f'font-size="13" font-weight="600">{sign}{abs(bar.value):.1f} {escape(unit)}</text>'
        )
    parts.append(
        f'<text x="{zero}" y="{height - 4}" text-anchor="middle" fill="{MUTED}" '
        'font-size="11">← lowers the chance · raises it →</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def stacked_tiers(
    rows: Sequence[tuple[str, dict[int, float]]],
    *,
    title: str,
    unit: str = "",
    capacity: dict[int, float] | None = None,
    tiers: tuple[int, ...] = (1, 2, 3),
    width: int = 640,
) -> str:
    """One horizontal bar per row (a rep, a run), split by tier; an optional capacity mark."""
    if not rows:
        return f'<p class="muted">{escape(title)}: nothing recorded yet.</p>'
    label_w, value_w, row_h = 170, 90, 24
    plot_w = width - label_w - value_w
    totals = [sum(parts.values()) for _, parts in rows]
    biggest = max([*totals, *(capacity or {}).values(), 1e-9])
    scale = plot_w / biggest
    height = row_h * len(rows) + 30
    out = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="100%" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for i, (label, parts) in enumerate(rows):
        y = 4 + i * row_h
        out.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" fill="{INK}" '
            f'font-size="13">{escape(_short(label, 24))}</text>'
        )
        x = float(label_w)
        for tier in tiers:
            value = parts.get(tier, 0.0)
            if value <= 0:
                continue
            w = value * scale
            out.append(
                f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" '
                f'fill="{TIER_COLOURS[tier]}"><title>Tier {tier}: {_fmt(value)}{unit}</title></rect>'
            )
            x += w
        out.append(
            f'<text x="{width - 4}" y="{y + 15}" text-anchor="end" fill="{INK}" '
            f'font-size="12">{_fmt(totals[i])}{escape(unit)}</text>'
        )
    if capacity:
        for tier, value in capacity.items():
            x = label_w + value * scale
            out.append(
                f'<line x1="{x:.1f}" y1="2" x2="{x:.1f}" y2="{height - 24}" stroke="{DOWN}" '
                f'stroke-dasharray="4 3"><title>Tier {tier} capacity per rep: {_fmt(value)}</title></line>'
            )
    legend_y = height - 8
    for j, tier in enumerate(tiers):
        lx = label_w + j * 90
        out.append(
            f'<rect x="{lx}" y="{legend_y - 9}" width="10" height="10" fill="{TIER_COLOURS[tier]}"/>'
            f'<text x="{lx + 14}" y="{legend_y}" font-size="11" fill="{MUTED}">Tier {tier}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _fmt(value: float) -> str:
    if abs(value) >= 1e6:
        return f"{value / 1e6:.1f}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.0f}k"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.1f}"
