"""Benchmarks of edge_agent, one JSON document on stdout and in `--out`.

Each area keeps its measurements in its own `scripts/bench_<area>.py`, exposing
`run(quick: bool) -> dict`; this runner imports them all (or those named with `--only`), runs
each on one core (the agent's per-camera worker budget), except an area that sets `ALL_CORES = True`
(the collector at scale: broker, database and collectors are separate processes), and merges the
results under the area's name.
Figures are medians of several repetitions: the machine is shared, so single runs are noisy.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent


def _areas() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in SCRIPTS.glob("bench_*.py"))


def _run_area(area: str, quick: bool) -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location(f"bench_{area}", SCRIPTS / f"bench_{area}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    pinned = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    # An area of several processes (broker, database, collectors) declares ALL_CORES: it gets them all.
    if pinned is not None and getattr(module, "ALL_CORES", False):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    try:
        started = time.perf_counter()
        result: dict[str, Any] = module.run(quick=quick)
        result["bench_seconds"] = round(time.perf_counter() - started, 2)
    finally:
        if pinned is not None:
            os.sched_setaffinity(0, pinned)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print their JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON file to write")
    parser.add_argument("--only", nargs="*", default=None, help=f"areas among {_areas()}")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(SCRIPTS.parent))
    import cv2

    cv2.setNumThreads(1)
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or "?"},
        "cores_used": 1,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for area in args.only or _areas():
        report[area] = _run_area(area, args.quick)
    text = json.dumps(report, indent=2, sort_keys=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
