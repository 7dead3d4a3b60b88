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


# --- MQTT: a real mosquitto on a free loopback port ------------------------------------------------


@pytest.fixture
def mosquitto():
    """A running `LocalBroker` (real /usr/sbin/mosquitto), stopped and removed after the test."""
    from edge_agent.link.localbroker import MOSQUITTO, LocalBroker

    if not MOSQUITTO.exists():
        pytest.skip(f"{MOSQUITTO} missing: install the mosquitto Debian package (scripts/bootstrap.sh)")
    with LocalBroker() as broker:
        yield broker


@pytest.fixture
def mosquitto_factory():
    """Build brokers with extra config lines: `mosquitto_factory(["acl_file /x"])`, started, cleaned up."""
    from edge_agent.link.localbroker import MOSQUITTO, LocalBroker

    if not MOSQUITTO.exists():
        pytest.skip(f"{MOSQUITTO} missing: install the mosquitto Debian package (scripts/bootstrap.sh)")
    brokers: list[LocalBroker] = []

    def make(extra_config: list[str] | tuple[str, ...] = (), **kwargs: object) -> LocalBroker:
        broker = LocalBroker(extra_config, **kwargs)  # type: ignore[arg-type]
        brokers.append(broker)
        return broker.start()

    yield make
    for broker in brokers:
        broker.cleanup()


# --- PostgreSQL: a real server (Debian's binaries) for the whole session, a fresh database per test -------


@pytest.fixture(scope="session")
def postgres():
    """A running `LocalPostgres` (tests/pg_support.py), removed at the end of the session."""
    from tests.pg_support import LocalPostgres, PostgresUnavailable

    try:
        server = LocalPostgres().start()
    except PostgresUnavailable as error:
        pytest.skip(str(error))
    yield server
    server.cleanup()


@pytest.fixture
def pg_url(postgres, request):
    """The URL of a new empty database on the session's server, dropped after the test."""
    import re
    import uuid

    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40] + "_" + uuid.uuid4().hex[:6]
    url = postgres.create_database(name)
    yield url
    postgres.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A collector database at the current schema on each engine: a SQLite file (made on first open), or a
    PostgreSQL database upgraded by the `db upgrade` function (a collector never upgrades a shared one)."""
    if request.param == "sqlite":
        return str(tmp_path / "collector.sqlite")
    url: str = request.getfixturevalue("pg_url")
    from edge_agent.collector.store import upgrade_schema

    upgrade_schema(url)
    return url
