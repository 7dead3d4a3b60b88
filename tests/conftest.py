"""Shared pytest fixtures. Each area appends its own section; keep them independent."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def datasets() -> Path:
    """The shared real-footage folder; tests that need it skip with a reason when it is absent."""
    if not DATASETS.is_dir():
        pytest.skip(f"real footage not found at {DATASETS} (shared/datasets is beside the project)")
    return DATASETS
