"""The fuzz harnesses of every reader of untrusted bytes (scripts/fuzz) run and find nothing.

`make test` runs each target a few seconds here; `make fuzz` runs them for longer. The crafted
segment headers of issue 13 are also fed to the segment harness's check, which must refuse them with
the reader's own error (before the fix they escaped as OverflowError, ZeroDivisionError, RecursionError).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.storage_support import PROJECT_ROOT

FUZZ = PROJECT_ROOT / "scripts" / "fuzz"
TARGETS = {"segment", "bundle", "evidence", "signed_request", "mqtt"}


def test_every_fuzz_target_runs_three_seconds_without_a_finding(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is in the test extra: pip install -e '.[test]'")
    report = tmp_path / "fuzz.json"
    options = ["--seconds", "3", "--artifacts", str(tmp_path / "found"), "--json", str(report)]
    done = subprocess.run(
        [sys.executable, str(FUZZ / "run.py"), *options],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    results = json.loads(report.read_text())
    assert {r["target"] for r in results} == TARGETS
    assert all(r["runs"] > 0 for r in results), results
    assert [r["target"] for r in results if r["findings"]] == [], done.stdout + done.stderr
    assert done.returncode == 0


@pytest.mark.parametrize("kind", ["sequence Infinity", "width Infinity", "time_base [1, 0]", "deep nesting"])
def test_the_segment_harness_refuses_the_crafted_headers_of_the_issue(kind: str) -> None:
    sys.path.insert(0, str(FUZZ))
    try:
        from targets import FIXTURE, segment_target
    finally:
        sys.path.remove(str(FUZZ))
    from tests.test_sealing import _crafted_header, _rewrite

    data = (FIXTURE / "segments" / "000000000002.seg").read_bytes()
    target = segment_target()
    target.run(data)  # the untouched segment is accepted...
    with pytest.raises(target.refusals, match="header"):  # ...the crafted one refused
        target.run(_rewrite(data, header=_crafted_header(data, kind)))
