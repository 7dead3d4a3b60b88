"""Run every fuzz target (scripts/fuzz/targets.py) for a set time; report inputs run and findings.

    scripts/fuzz/run.py --seconds 600 --json fuzz.json     # `make fuzz`
    scripts/fuzz/run.py --seconds 3                        # what `make test` runs, through pytest

Each target starts from its seeds in a fresh corpus folder; a finding (an unexpected exception, a
hang over --timeout seconds, memory over 2 GB) is kept in --artifacts with the input that caused it,
and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from targets import TARGETS  # noqa: E402 - the folder is not a package

_RUNS_RE = re.compile(r"stat::number_of_executed_units:\s*(\d+)")


@dataclass(frozen=True)
class FuzzResult:
    """What one target did in its time."""

    target: str
    seconds: float
    runs: int
    findings: int
    detail: str


def seed_corpus(name: str, folder: Path) -> Path:
    """Write the target's seeds into a fresh corpus folder."""
    corpus = folder / name
    corpus.mkdir(parents=True)
    for index, seed in enumerate(TARGETS[name]().seeds()):
        (corpus / f"seed-{index}").write_bytes(seed)
    return corpus


def fuzz(name: str, seconds: float, artifacts: Path, timeout_s: int, work: Path) -> FuzzResult:
    """Fuzz one target in a child process for `seconds`."""
    corpus = seed_corpus(name, work)
    artifacts.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, str(HERE / "targets.py"), name,
        f"-max_total_time={max(1, int(seconds))}", f"-timeout={timeout_s}", "-rss_limit_mb=2048",
        "-print_final_stats=1", f"-artifact_prefix={artifacts}/{name}-", str(corpus),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=seconds + 120)
    runs = sum(int(n) for n in _RUNS_RE.findall(done.stderr))
    found = done.returncode != 0
    detail = done.stderr[-2000:] if found else ""
    return FuzzResult(name, seconds, runs, int(found), detail)


def main(argv: list[str] | None = None) -> int:
    """Fuzz the chosen targets one after the other; exit 1 on any finding."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="time per target")
    parser.add_argument("--targets", nargs="*", default=sorted(TARGETS), choices=sorted(TARGETS))
    parser.add_argument("--artifacts", type=Path, default=Path("fuzz-artifacts"), help="findings go here")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="fuzz-corpus-") as work:
        for name in args.targets:
            result = fuzz(name, args.seconds, args.artifacts, args.timeout, Path(work))
            results.append(result)
            verdict = "FINDING" if result.findings else "ok"
            print(f"{name:15s} {result.runs:>10,d} inputs in {result.seconds:g}s  {verdict}", flush=True)
            if result.detail:
                print(result.detail, file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 1 if any(r.findings for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
