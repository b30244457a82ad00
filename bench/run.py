"""The benchmark of issue 6, in one command: ``python bench/run.py`` (``--quick`` for a smoke run).

Writes bench/RESULTS.md, bench/results.json and the charts (overhead.png, freetier.png,
scale.png) beside them. Loopback only; every loop is bounded; every process it starts is
stopped before it returns.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH, machine_line, quiet_litellm, setup_process_env

SECTIONS = ("overhead", "freetier", "scale")


def _progress(message: str) -> None:
    print(message, flush=True)


def main(argv: list[str] | None = None) -> int:
    import shutil

    from common import STATE_DIR

    # In-process calls read it too: nothing a past run or the user's own sessions learnt
    # (in the default state directory) may leak into this run's figures.
    os.environ["FREEROUTER_STATE_DIR"] = STATE_DIR
    try:
        return _main(argv)
    finally:
        shutil.rmtree(STATE_DIR, ignore_errors=True)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="a 3-4 minute smoke run with few samples"
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    parser.add_argument("--seed", type=int, default=20260501, help="the free tier's seed")
    parser.add_argument(
        "--other-seeds",
        default="7,11,13",
        help="seeds of other tiers on which the two freerouter policies run again, and every"
        " policy on a 50-a-day account (for the"
        " spread between tiers; '' for none; none with --quick)",
    )
    parser.add_argument(
        "--race-widths",
        default="6,12,36",
        help="wider races freerouter also runs on the main tier (36 races every model; '' for"
        " none; none with --quick)",
    )
    parser.add_argument("--no-proxy", action="store_true", help="skip the litellm proxy runs")
    parser.add_argument(
        "--out", type=Path, default=BENCH, help="where RESULTS.md, results.json and the charts go"
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="only redraw RESULTS.md and the charts from a results.json",
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        return render(json.loads(args.render.read_text()), args.out)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")

    setup_process_env()
    quiet_litellm()
    import charts
    import report

    started = time.perf_counter()
    # The command that reproduces the figures: where they were written is no part of it.
    given = list(argv if argv is not None else sys.argv[1:])
    for i, arg in enumerate(given):
        if arg == "--out":
            del given[i : i + 2]
            break
        if arg.startswith("--out="):
            del given[i]
            break
    command = ("python bench/run.py " + shlex.join(given)).rstrip()
    results: dict[str, object] = {
        "meta": {
            "command": command.strip(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine_line(),
            "quick": args.quick,
        }
    }
    args.out.mkdir(parents=True, exist_ok=True)
    _progress(f"machine: {results['meta']['machine']}")  # type: ignore[index]

    def timed(name: str, t0: float) -> None:
        _progress(f"  ({name}: {time.perf_counter() - t0:.0f} s)")

    if "overhead" in sections:
        t0 = time.perf_counter()
        import overhead

        _progress("1/3 overhead against LiteLLM's own path")
        data = overhead.run(
            rounds=3 if args.quick else 10,
            sync_rounds=2 if args.quick else 8,
            chunks=2000 if args.quick else 3000,
            first_token_delay=0.25,
            progress=_progress,
        )
        results["overhead"] = data
        _save(results, args.out)  # a later crash keeps what ran (--render)
        charts.overhead(data, args.out / "overhead.png")
        timed("overhead", t0)

    if "freetier" in sections:
        import freetier

        t0 = time.perf_counter()
        params = freetier.Params(
            seed=args.seed,
            requests=160,
            mean_gap=4.0,
            time_scale=0.05,
            quota=50,
            quota_requests=50,
            # As fast as the main workload: an account may send no more than 20 free requests
            # a minute, so no real 50-a-day account can ask one a second.
            quota_gap=4.0,
        )
        if args.quick:
            params.requests, params.quota_requests = 30, 15
        _progress(
            f"2/3 simulated free tier: {params.requests} requests, time x{1 / params.time_scale:g}"
        )
        data = freetier.run(params, progress=_progress)
        others = [] if args.quick else [int(x) for x in args.other_seeds.split(",") if x.strip()]
        if others:
            _progress(
                f"  the two freerouter policies on other tiers, and every policy on a 50-a-day"
                f" account there: seeds {args.other_seeds}"
            )
            data["across_seeds"] = freetier.across_seeds(params, others, progress=_progress)
        widths = [] if args.quick else [int(x) for x in args.race_widths.split(",") if x.strip()]
        if widths:
            _progress(f"  freerouter racing wider on the main tier: {args.race_widths} at once")
            data["wider_races"] = freetier.wider_races(params, widths, progress=_progress)
        results["freetier"] = data
        _save(results, args.out)  # a later crash keeps what ran (--render)
        charts.freetier(data, args.out / "freetier.png")
        timed("free tier", t0)

    if "scale" in sections:
        import scale

        t0 = time.perf_counter()
        levels = [1, 10, 50] if args.quick else [1, 10, 50, 100, 200]
        _progress(f"3/3 scale: {', '.join(map(str, levels))} concurrent streams")
        data = scale.run(
            levels=levels,
            floor=4 if args.quick else 8,
            chunks=100,
            proxy=not args.no_proxy,
            progress=_progress,
        )
        results["scale"] = data
        _save(results, args.out)  # a later crash keeps what ran (--render)
        charts.scale(data, args.out / "scale.png")
        timed("scale", t0)

    results["meta"]["duration"] = time.perf_counter() - started  # type: ignore[index]
    _save(results, args.out)
    (args.out / "RESULTS.md").write_text(report.render(results))
    _progress(f"wrote {args.out / 'RESULTS.md'} in {results['meta']['duration'] / 60:.1f} min")  # type: ignore[index]
    return 0


def _save(results: dict[str, Any], out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")


def render(results: dict[str, Any], out: Path) -> int:
    """RESULTS.md and the charts again from saved figures (after a change to the report)."""
    import charts
    import report

    for section, draw in (
        ("overhead", charts.overhead),
        ("freetier", charts.freetier),
        ("scale", charts.scale),
    ):
        if results.get(section):
            draw(results[section], out / f"{section}.png")
    (out / "RESULTS.md").write_text(report.render(results))
    _progress(f"wrote {out / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
