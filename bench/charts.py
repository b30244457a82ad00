"""The PNG charts beside RESULTS.md (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from common import SHORT

COLOURS = {
    "litellm": "#7f7f7f",
    "freerouter": "#1f77b4",
    "router": "#8c564b",
    "random": "#e377c2",
    "seed": "#ff7f0e",
    "race": "#1f77b4",
    "hedged": "#2ca02c",
    "hedged_warm": "#98df8a",
    "oracle": "#000000",
    "oracle_run": "#555555",
    "best_known": "#9467bd",
    "informed_race": "#17becf",
    "informed_hedged": "#bcbd22",
}


def _paired_strip(
    ax: Any,
    data: dict[str, Any],
    groups: list[tuple[str, str]],
    field: str,
    median_field: str,
    scale: float,
    bars: bool = True,
) -> None:
    """Each run as a dot, the median as a bar (or, on a cut axis, a line), the two paths
    side by side."""
    for i, (key, _label) in enumerate(groups):
        for j, path_name in enumerate(("litellm", "freerouter")):
            row = data[key][path_name]
            x = i * 3 + j
            values = [v * scale for v in row[field]]
            middle = (row[median_field] or 0) * scale
            if bars:
                ax.bar(x, middle, color=COLOURS[path_name], alpha=0.55, width=0.8)
            else:
                ax.hlines(middle, x - 0.4, x + 0.4, color=COLOURS[path_name], linewidth=3)
            offsets = [x - 0.25 + 0.5 * k / max(1, len(values) - 1) for k in range(len(values))]
            ax.scatter(offsets, values, color="black", s=7, zorder=3)
            ax.text(
                x + 0.42,
                middle,
                f"{middle:.0f}" if middle >= 100 else f"{middle:.1f}",
                ha="left",
                va="center",
                fontsize=7,
            )
    ax.set_xticks([i * 3 + 0.5 for i in range(len(groups))], [label for _k, label in groups])


def overhead(data: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": [2, 1, 2]})
    long_groups = [
        (k, label)
        for k, label in (("long_async", "acompletion"), ("long_sync", "completion (sync)"))
        if k in data
    ]
    _paired_strip(axes[0], data, long_groups, "ttfts", "ttft_median", 1000, bars=False)
    lows = [
        v * 1000
        for k, _ in long_groups
        for p in ("litellm", "freerouter")
        for v in data[k][p]["ttfts"]
    ]
    axes[0].set_ylim(min(lows) * 0.9, max(lows) * 1.05)
    axes[0].set_ylabel("ms (median as a line, runs as dots)")
    axes[0].set_title(
        f"First token, upstream answers after {data['first_token_delay'] * 1000:.0f} ms",
        fontsize=10,
    )
    if "instant_async" in data:
        _paired_strip(
            axes[1], data, [("instant_async", "acompletion")], "ttfts", "ttft_median", 1000
        )
        axes[1].set_ylabel("ms")
        axes[1].set_title("First token, upstream answers at once", fontsize=10)
    _paired_strip(axes[2], data, long_groups, "rates", "rate_median", 1)
    axes[2].set_ylabel("content chunks per second")
    axes[2].set_title(f"Streaming a {data['chunks']}-chunk answer", fontsize=10)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=COLOURS[p], alpha=0.55) for p in ("litellm", "freerouter")
    ]
    fig.legend(
        handles,
        ["openrouter/<model> (LiteLLM's own path)", "freerouter/auto (3 contenders)"],
        loc="lower center",
        ncol=2,
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def freetier(data: dict[str, Any], path: Path) -> None:
    rows = list(data["policies"])
    refs = (
        list(data.get("informed") or [])
        + [data["oracle"]]
        + ([data["oracle_run"]] if data.get("oracle_run") else [])
    )
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [1.5, 1.0, 1.3]})
    ax = axes[0]
    names = [r["name"] for r in rows + refs]
    for k, (q, alpha) in enumerate((("p50", 0.95), ("p95", 0.65), ("p99", 0.35))):
        xs = [i + (k - 1) * 0.27 for i in range(len(names))]
        ys = [(r[q] or 0) for r in rows + refs]
        ax.bar(
            xs,
            ys,
            width=0.26,
            color=[COLOURS[n] for n in names],
            alpha=alpha,
            label=q,
            edgecolor="black",
            linewidth=0.3,
        )
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), [SHORT[n] for n in names], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("first-token time, simulated s (log)")
    ax.set_title("First token: p50 / p95 / p99 (dark to light)")
    ax.axhline(data["oracle"]["p95"], color="black", linestyle=":", linewidth=1)
    ax.text(
        len(names) - 0.5, data["oracle"]["p95"], "oracle p95", fontsize=7, ha="right", va="bottom"
    )

    ax = axes[1]
    per_answer = [r["per_answer"] or 0 for r in rows]
    bars = ax.bar(range(len(rows)), per_answer, color=[COLOURS[r["name"]] for r in rows], alpha=0.8)
    for bar, r in zip(bars, rows, strict=True):
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height(),
            f"{r['per_answer'] or 0:.2f}\n{r['success']:.0%} ok",
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.axhline(1.3, color="#2ca02c", linestyle="--", linewidth=1)
    ax.text(
        len(rows) - 0.6, 1.22, "hedged goal 1.3", fontsize=7, color="#2ca02c", ha="right", va="top"
    )
    ax.set_xticks(
        range(len(rows)), [SHORT[r["name"]] for r in rows], rotation=30, ha="right", fontsize=8
    )
    ax.set_ylabel("upstream requests per answer")
    ax.set_ylim(0, max([*per_answer, 1.0]) * 1.3)
    ax.set_title("Quota spent per answer")

    ax = axes[2]
    for r in rows + refs:
        values = sorted(r["ttfts"])
        if not values:
            continue
        n = r["requests"]  # failures never arrive: the curve tops out at the success rate
        ys = [(i + 1) / n for i in range(len(values))]
        style = ":" if r["name"].startswith(("oracle", "informed")) else "-"
        ax.step(
            values,
            ys,
            where="post",
            color=COLOURS[r["name"]],
            linestyle=style,
            label=SHORT[r["name"]],
        )
    ax.set_xscale("log")
    ax.set_xlabel("first-token time, simulated s (log)")
    ax.set_ylabel("share of requests answered by then")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Distribution (failures never reach the top)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scale(data: dict[str, Any], path: Path) -> None:
    series = [
        (k, label, style)
        for k, label, style in (
            ("acompletion_litellm", "acompletion, openrouter/<model>", ("#7f7f7f", "-")),
            ("acompletion_freerouter", "acompletion, freerouter/auto", ("#1f77b4", "-")),
            ("proxy_litellm", "proxy, openrouter/<model>", ("#7f7f7f", "--")),
            ("proxy_freerouter", "proxy, freerouter/auto", ("#1f77b4", "--")),
        )
        if data.get(k)
    ]
    panels = (
        ("answers_per_s", "answers per second"),
        ("cpu_ms_per_request", "CPU ms per request (the process doing the work)"),
        ("rss_peak_mb", "peak RSS, MB"),
        ("ttft_p95", "first-token p95, s"),
    )
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for name, label, (colour, style) in series:
            rows = data[name]
            ax.plot(
                [r["level"] for r in rows],
                [r[key] or 0 for r in rows],
                style,
                marker="o",
                color=colour,
                label=label,
            )
        ax.set_xscale("log")
        ax.set_xlabel("concurrent streams")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
