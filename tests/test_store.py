"""The collector's store on both engines (a real SQLite file, a real PostgreSQL server): registry rows,
idempotent and ordered writes, concurrent collectors, retention, versioned schema."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psycopg
import pytest

from edge_agent.collector.console.fleet import FleetRules, fleet_view
from edge_agent.collector.store import (
    DEVICE_OFFLINE,
    LATEST,
    STALE_AFTER_S,
    STALE_PERIODS,
    AvailabilityRecord,
    MalformedRecord,
    MotionRecord,
    Record,
    SchemaError,
    StatusRecord,
    Store,
    StoreUnavailable,
    open_store,
    upgrade_schema,
)
from edge_agent.collector.store import sql as store_sql
from edge_agent.collector.store.migrations import MIGRATIONS, SQLITE
from edge_agent.collector.store.postgres import redact
from edge_agent.formats.mqtt_wire import SCHEMA, CameraStatus, MotionMessage, StatusMessage

NOW = 1714564800.0


def status(
    site: str,
    device: str,
    ts: float,
    states: tuple[str, ...] = ("running",),
    heartbeat_s: float | None = None,
) -> StatusRecord:
    message = StatusMessage(
        schema=SCHEMA,
        site=site,
        device=device,
        ts=ts,
        version="1.0",
        uptime_s=5.0,
        cameras=[CameraStatus(id=f"cam{i}", state=s, fps=10.0, masks=1) for i, s in enumerate(states)],
        clip_url=f"https://{device}.{site}:8480",
        heartbeat_s=heartbeat_s,
    )
    return StatusRecord(message, json.dumps(message.wire()), NOW)


def motion(
    site: str, device: str, event_id: str, phase: str = "start", ts: float = NOW, received: float = NOW
) -> MotionRecord:
    event = MotionMessage(
        schema=SCHEMA,
        event_id=event_id,
        phase=phase,
        ts=ts,
        start_ts=NOW,
        score=0.5,
        boxes=[(0.1, 0.1, 0.2, 0.2)],
        zones=["door"],
    )
    return MotionRecord(site, device, "cam0", event, received)


@pytest.fixture
def store(db: str) -> Iterator[Store]:
    opened = open_store(db)
    yield opened
    opened.close()


def test_registry_rows_from_a_batch(store: Store) -> None:
    records: list[Record] = [
        AvailabilityRecord("s1", "d1", "online", NOW),
        status("s1", "d1", NOW, ("running", "disconnected")),
        status("s1", "d2", NOW),
        AvailabilityRecord("s2", "d9", "offline", NOW),
        motion("s1", "d1", "e1"),
    ]
    assert store.write(records, NOW + 1) == ["stored"] * 5
    sites = {s.site: s for s in store.sites(NOW + 1)}
    s1 = sites["s1"]
    # d2 never said it is online: its camera is not counted as running
    assert (s1.devices, s1.online, s1.cameras, s1.cameras_running, s1.last_seen) == (2, 1, 3, 1, NOW)
    assert (sites["s2"].devices, sites["s2"].online) == (1, 0)
    d1 = store.device_status("s1", "d1")
    assert d1 is not None and d1.online and d1.clip_url == "https://d1.s1:8480" and d1.version == "1.0"
    assert d1.status is not None and d1.status["cameras"][1]["state"] == "disconnected"
    assert store.device_status("s1", "nope") is None
    assert [d.device for d in store.devices("s1")] == ["d1", "d2"]
    [event] = store.events(site="s1")
    assert (event.device, event.camera, event.event_id, event.zones, event.stored_at) == (
        "d1",
        "cam0",
        "e1",
        ["door"],
        NOW + 1,
    )
    [history] = store.status_history("s1", "d1")
    assert (history.ts, history.cameras, history.cameras_running) == (NOW, 2, 1)


def test_motion_redelivery_is_a_duplicate_updates_are_kept(store: Store) -> None:
    batch = [
        motion("s1", "d1", "e1", "start"),
        motion("s1", "d1", "e1", "start"),  # redelivered after a collector crash
        motion("s1", "d1", "e1", "start", NOW + 0.5),  # a start repeated with another ts is still the start
        motion("s1", "d1", "e1", "update", NOW + 2),
        motion("s1", "d1", "e1", "update", NOW + 4),
        motion("s1", "d1", "e1", "update", NOW + 4),
        motion("s1", "d1", "e1", "end", NOW + 9),
        motion("s1", "d2", "e1", "start"),  # the same event id on another device is another event
    ]
    outcomes = store.write(batch, NOW)
    assert outcomes == [
        "stored",
        "duplicate",
        "duplicate",
        "stored",
        "stored",
        "duplicate",
        "stored",
        "stored",
    ]
    assert store.write(batch, NOW) == ["duplicate"] * len(batch)  # the whole batch delivered again
    assert [(e.device, e.phase, e.ts) for e in store.motion_after(0)] == [
        ("d1", "start", NOW),
        ("d1", "update", NOW + 2),
        ("d1", "update", NOW + 4),
        ("d1", "end", NOW + 9),
        ("d2", "start", NOW),
    ]
    assert store.counters()["duplicates"] == 3 + len(batch)


def test_an_older_status_never_replaces_a_newer_one(store: Store) -> None:
    assert store.write([status("s1", "d1", NOW + 10, ("running",))], NOW) == ["stored"]
    assert store.write([status("s1", "d1", NOW, ("stopped",))], NOW) == ["stale"]  # late, kept in history
    assert store.write([status("s1", "d1", NOW + 10, ("stopped",))], NOW) == [
        "duplicate"
    ]  # same (device, ts)
    current = store.device_status("s1", "d1")
    assert current is not None and current.status is not None
    assert current.status["cameras"][0]["state"] == "running"
    # several statuses of one device in one batch, out of order: the newest wins, whatever the order
    batch = [
        status("s1", "d1", NOW + 30, ("a",)),
        status("s1", "d1", NOW + 40, ("b", "b")),
        status("s1", "d1", NOW + 20, ("c",)),
    ]
    assert store.write(batch, NOW) == ["stored", "stored", "stale"]
    current = store.device_status("s1", "d1")
    assert current is not None and current.status is not None
    assert [c["state"] for c in current.status["cameras"]] == ["b", "b"]
    assert [(s.site, s.cameras, s.cameras_running) for s in store.sites(NOW + 41)] == [("s1", 2, 0)]
    assert [h.ts - NOW for h in store.status_history("s1", "d1")] == [0, 10, 20, 30, 40]
    assert [h.ts - NOW for h in store.status_history("s1", "d1", since=NOW + 25)] == [30, 40]
    assert store.counters()["stale"] == 2


def test_availability_changes_are_history_repeats_are_not(store: Store) -> None:
    states = ["online", "online", "offline", "online"]
    outcomes = store.write([AvailabilityRecord("s1", "d1", s, NOW + i) for i, s in enumerate(states)], NOW)  # type: ignore[arg-type]
    assert outcomes == ["stored", "duplicate", "stored", "stored"]
    history = store.availability_history("s1", "d1")
    assert [(h.state, h.at - NOW) for h in history] == [("online", 0), ("offline", 2), ("online", 3)]
    device = store.device_status("s1", "d1")
    assert device is not None and device.online and device.last_seen == NOW + 3


def test_malformed_counted_per_device_and_the_latest_kept(store: Store) -> None:
    records: list[Record] = [
        MalformedRecord("csu/v1/s1/d1/cam0/motion", "s1", "d1", f"score: bad {i}", NOW + i)
        for i in range(store_sql.MALFORMED_KEPT + 5)
    ]
    records.append(MalformedRecord("csu/v1/x", "", "", "topic is not ...", NOW))
    records.append(motion("s1", "d1", "good"))
    outcomes = store.write(records, NOW)
    assert outcomes.count("malformed") == store_sql.MALFORMED_KEPT + 6 and outcomes[-1] == "stored"
    device = store.device_status("s1", "d1")
    assert device is not None and device.malformed == store_sql.MALFORMED_KEPT + 5
    assert store.counters()["malformed"] == store_sql.MALFORMED_KEPT + 6
    latest = store.malformed(limit=2)
    assert [topic for topic, _, _ in latest] == ["csu/v1/x", "csu/v1/s1/d1/cam0/motion"]
    assert len(store.malformed(limit=5000)) == store_sql.MALFORMED_KEPT
    assert [e.event_id for e in store.events()] == ["good"]


def test_purge_removes_only_what_is_older(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_sql, "PURGE_CHUNK", 3)  # several chunks per table
    day = 86400.0
    old, recent = NOW - 40 * day, NOW - day
    # motion of another device than the one going offline below (which would close its events)
    records: list[Record] = [motion("s1", "d2", f"old{i}", ts=old + i) for i in range(7)]
    records += [motion("s1", "d2", f"new{i}", ts=recent + i) for i in range(2)]
    records += [status("s1", "d1", old + i) for i in range(4)] + [status("s1", "d1", recent)]
    records += [
        AvailabilityRecord("s1", "d1", "online", old),
        AvailabilityRecord("s1", "d1", "offline", recent),
    ]
    records += [MalformedRecord("t", "s1", "d1", "bad", old), MalformedRecord("t", "s1", "d1", "bad", recent)]
    store.write(records, NOW)
    purged = store.purge(NOW - 30 * day)
    assert (purged.motion_events, purged.statuses, purged.availability, purged.malformed) == (7, 4, 1, 1)
    assert [e.event_id for e in store.events()] == ["new1", "new0"]
    assert [h.ts for h in store.status_history("s1", "d1")] == [recent]
    assert [h.state for h in store.availability_history("s1", "d1")] == ["offline"]
    device = store.device_status("s1", "d1")  # the registry itself (devices, current status) stays
    assert device is not None and device.status is not None and device.malformed == 2
    assert store.purge(NOW - 30 * day) == type(purged)()


def test_events_are_newest_first_and_a_limit_keeps_the_newest(store: Store) -> None:
    """Issue 14 item 7: `events --limit 8` listed the 8 oldest. Stored out of time order on purpose (a
    device's backlog arrives after newer events): the order is the events' time, then the latest stored."""
    stored_order = [3, 0, 9, 1, 7, 2, 8, 4, 6, 5]
    store.write([motion("s1", "d1", f"e{i}", ts=NOW + i) for i in stored_order], NOW)
    store.write([motion("s1", "d2", "tie", ts=NOW + 9)], NOW)  # same time as e9, stored later: first
    assert [e.event_id for e in store.events(limit=8)] == ["tie", "e9", "e8", "e7", "e6", "e5", "e4", "e3"]
    assert [e.event_id for e in store.events(device="d1", since=NOW + 7)] == ["e9", "e8", "e7"]
    assert [e.event_id for e in store.events(site="s1", limit=1)] == ["tie"]
    # the live view still reads in the order stored
    assert [e.event_id for e in store.motion_after(0)][:3] == ["e3", "e0", "e9"]


# --- what users see is true (issue 14 item 6) ----------------------------------------------------------


def online(site: str, device: str, at: float = NOW) -> AvailabilityRecord:
    return AvailabilityRecord(site, device, "online", at)


def offline(site: str, device: str, at: float = NOW) -> AvailabilityRecord:
    return AvailabilityRecord(site, device, "offline", at)


def test_only_cameras_of_online_devices_with_a_fresh_status_are_running(store: Store) -> None:
    """`sites` said "CAMERAS RUNNING 2/2" for a device whose last will had come. Running counts the
    cameras of online devices whose last status is fresh: younger than the stale limit, or than three of
    the heartbeats a device declares; the same verdicts as the console's fleet page."""
    two = ("running", "running")
    now = NOW + 1000
    store.write(
        [
            online("s1", "fine"),
            status("s1", "fine", now - 10, two),
            online("s1", "dead"),
            status("s1", "dead", now - 10, two),
            offline("s1", "dead", NOW + 1),  # last will, after its last status
            online("s1", "silent"),
            status("s1", "silent", now - 100, two),  # 100 s > 3 x 30 s
            online("s1", "metered"),
            status("s1", "metered", now - 600, two, heartbeat_s=300),  # 600 s < 3 x 300 s
            online("s1", "lost"),
            status("s1", "lost", now - 1000, two, heartbeat_s=300),
            online("s1", "broken"),
            status("s1", "broken", now - 10, ("running", "error")),
            status("s2", "never-online", now - 10, two),
        ],
        now,
    )
    counts = {s.site: (s.online, s.devices, s.cameras_running, s.cameras) for s in store.sites(now)}
    # running: fine 2 + metered 2 + broken 1
    assert counts == {"s1": (5, 6, 5, 12), "s2": (0, 1, 0, 2)}
    assert store.sites(now, stale_after_s=120.0)[0].cameras_running == 7  # `silent` is fresh then
    assert store.sites(now + 300)[0].cameras_running == 2  # `metered` alone: 900 s old, 3 heartbeats

    rules = FleetRules(status_interval_s=STALE_AFTER_S / STALE_PERIODS)
    view = fleet_view(store.devices(), now, rules)
    fresh_online = [d for d in view.devices if not any(p.code in ("offline", "stale") for p in d.problems)]
    per_site = {site: 0 for site in counts}
    for device in fresh_online:
        per_site[device.site] += sum(c.state == "running" for c in device.cameras)
    assert per_site == {s.site: s.cameras_running for s in store.sites(now)}, "the console agrees"


def _ends(store: Store) -> dict[tuple[str, str], tuple[float, str | None]]:
    """(device, event_id) -> (ts, end_reason) of every end stored, checking one end per event."""
    ends = [e for e in store.motion_after(0, limit=10_000) if e.phase == "end"]
    found = {(e.device, e.event_id): (e.ts, e.end_reason) for e in ends}
    assert len(found) == len(ends), "one end per event"
    return found


def test_going_offline_closes_the_devices_open_events_once(store: Store) -> None:
    store.write(
        [
            online("s1", "d1"),
            motion("s1", "d1", "open", "start", NOW),
            motion("s1", "d1", "open", "update", NOW + 20),
            motion("s1", "d1", "done", "start", NOW),
            motion("s1", "d1", "done", "end", NOW + 5),
            motion("s1", "d1", "ahead", "start", NOW + 200),  # the device's clock runs ahead
            motion("s1", "d2", "elsewhere", "start", NOW),
        ],
        NOW,
    )
    before = store.last_motion_id()
    assert store.write([offline("s1", "d1", NOW + 60)], NOW + 60) == ["stored"]
    assert _ends(store) == {
        ("d1", "done"): (NOW + 5, None),
        ("d1", "open"): (NOW + 60, DEVICE_OFFLINE),  # at the offline
        ("d1", "ahead"): (NOW + 200, DEVICE_OFFLINE),  # never before its own messages
    }
    new = store.motion_after(before)  # the live view sees the ends
    assert sorted((e.event_id, e.phase, e.end_reason) for e in new) == [
        ("ahead", "end", DEVICE_OFFLINE),
        ("open", "end", DEVICE_OFFLINE),
    ]
    [closed] = [e for e in new if e.event_id == "open"]
    assert (closed.camera, closed.start_ts, closed.zones, closed.stored_at) == (
        "cam0",
        NOW,
        ["door"],
        NOW + 60,
    )
    # a redelivered last will, or a later one, adds nothing
    assert store.write([offline("s1", "d1", NOW + 61)], NOW + 61) == ["duplicate"]
    store.write([online("s1", "d1", NOW + 70), offline("s1", "d1", NOW + 80)], NOW + 80)
    assert len(_ends(store)) == 3
    assert [e.event_id for e in store.events(device="d2")] == ["elsewhere"]  # another device: open


def test_the_devices_own_end_replaces_the_collectors(store: Store) -> None:
    """The device lost its link, not its life: after reconnecting, its outbox resends the real end."""
    store.write([online("s1", "d1"), motion("s1", "d1", "e1", "start", NOW)], NOW)
    store.write([offline("s1", "d1", NOW + 60)], NOW + 60)
    assert _ends(store) == {("d1", "e1"): (NOW + 60, DEVICE_OFFLINE)}
    before = store.last_motion_id()
    resent: list[Record] = [
        online("s1", "d1", NOW + 90),
        motion("s1", "d1", "e1", "end", NOW + 30, received=NOW + 90),
    ]
    assert store.write(resent, NOW + 90) == ["stored", "stored"]
    assert _ends(store) == {("d1", "e1"): (NOW + 30, None)}
    assert [e.phase for e in store.motion_after(before)] == ["end"]  # the live view sees it replaced
    assert store.write(resent[1:], NOW + 91) == ["duplicate"]  # redelivered: the real one stays
    store.write([offline("s1", "d1", NOW + 120)], NOW + 120)
    assert _ends(store) == {("d1", "e1"): (NOW + 30, None)}


def test_a_batch_closes_what_arrived_before_the_offline_not_after(store: Store) -> None:
    """One batch (a backlog after a collector restart): start, last will, reconnect, a new start."""
    batch: list[Record] = [
        online("s1", "d1"),
        motion("s1", "d1", "before", "start"),
        offline("s1", "d1"),
        online("s1", "d1"),
        motion("s1", "d1", "after", "start"),
        motion("s1", "d2", "last-word", "start"),
        offline("s1", "d2"),
    ]
    store.write(batch, NOW)
    assert _ends(store) == {
        ("d1", "before"): (NOW, DEVICE_OFFLINE),
        ("d2", "last-word"): (NOW, DEVICE_OFFLINE),
    }


def test_a_start_another_collector_stores_after_the_offline_is_closed(db: str) -> None:
    """Two collectors on one database: the start reached the first before the last will reached the
    second, but the second committed first. A start that arrived after the offline (the device is back,
    its `online` still on its way) stays open."""
    first, second = open_store(db), open_store(db)
    try:
        first.write([online("s1", "d1")], NOW)
        second.write([offline("s1", "d1", NOW + 10)], NOW + 10)
        assert first.write([motion("s1", "d1", "late", received=NOW + 5)], NOW + 5) == ["stored"]
        assert first.write([motion("s1", "d1", "new", received=NOW + 20)], NOW + 20) == ["stored"]
        assert _ends(second) == {("d1", "late"): (NOW + 10, DEVICE_OFFLINE)}
        # the other way round: a start received after a last will that another collector commits later
        first.write([online("s1", "d2", NOW + 30), motion("s1", "d2", "live", received=NOW + 50)], NOW + 50)
        second.write([offline("s1", "d2", NOW + 40)], NOW + 40)
        assert ("d2", "live") not in _ends(second)
    finally:
        first.close()
        second.close()


def _write_at_once(
    stores: list[Store], records: Sequence[Record], batch: int, now: Callable[[list[Record]], float]
) -> None:
    """Each store writes every record, in its own shuffled order and batches of `batch`, from its own
    thread, all at once (as several `serve` processes); fails naming a writer's error or a stuck writer."""
    errors: list[BaseException] = []

    def collector(index: int) -> None:
        order = list(records)
        random.Random(index).shuffle(order)
        try:
            for start in range(0, len(order), batch):
                chunk = order[start : start + batch]
                stores[index].write(chunk, now(chunk))
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=collector, args=(i,), daemon=True) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads), "a writer still blocked after 60 s: deadlock?"


def test_collectors_closing_at_once_write_one_end_per_event(db: str) -> None:
    """Two collectors get the same starts and last wills in different orders and batches, concurrently:
    whatever the interleaving, every event ends once, by the collector, with no deadlock."""
    devices = [f"d{i}" for i in range(6)]
    records: list[Record] = [online("s1", d, NOW - 1) for d in devices]
    records += [motion("s1", devices[i % 6], f"e{i}", received=NOW) for i in range(120)]
    wills: list[Record] = [offline("s1", d, NOW + 10) for d in devices]
    setup = open_store(db)
    setup.write(records[:6], NOW - 1)
    setup.close()
    stores = [open_store(db), open_store(db)]
    try:
        _write_at_once(stores, records[6:] + wills, 7, lambda chunk: max(r.received_at for r in chunk))
        ends = _ends(stores[0])
        assert sorted(ends) == sorted((devices[i % 6], f"e{i}") for i in range(120))
        assert {reason for _, reason in ends.values()} == {DEVICE_OFFLINE}
    finally:
        for opened in stores:
            opened.close()


def test_live_view_reads_rows_after_an_id(store: Store) -> None:
    assert store.last_motion_id() == 0 and store.motion_after(0) == []
    store.write([motion("s1", "d1", f"e{i}") for i in range(5)], NOW)
    first = store.motion_after(0, limit=2)
    assert [e.event_id for e in first] == ["e0", "e1"]
    assert [e.event_id for e in store.motion_after(first[-1].id)] == ["e2", "e3", "e4"]
    assert store.last_motion_id() == store.events()[0].id


def test_two_collectors_writing_at_once_converge(db: str) -> None:
    """Two stores (two connections or pools, as two `serve` processes) write the same messages in different
    orders and batches, concurrently: each motion row once, each device's newest status current, no
    deadlock whatever the interleaving."""
    devices = [f"d{i}" for i in range(8)]
    records: list[Record] = [status("s1", d, NOW + t) for d in devices for t in range(20)]
    records += [motion(f"s{i % 3}", devices[i % 8], f"e{i}", ts=NOW + i) for i in range(300)]
    stores = [open_store(db), open_store(db)]
    try:
        _write_at_once(stores, records, 25, lambda _chunk: NOW)
        events = stores[0].events(limit=1000)
        assert sorted(e.event_id for e in events) == sorted(f"e{i}" for i in range(300))
        for device in devices:
            current = stores[0].device_status("s1", device)
            assert current is not None and current.status is not None
            assert current.status["ts"].startswith("2024-05-01T12:00:19"), (device, current.status["ts"])
            assert len(stores[0].status_history("s1", device)) == 20
        assert stores[0].counters()["duplicates"] == len(records)
    finally:
        for opened in stores:
            opened.close()


def test_schema_is_versioned_and_upgrades_are_idempotent(db: str) -> None:
    store = open_store(db)
    try:
        assert store.schema_version() == LATEST == MIGRATIONS[-1].version
    finally:
        store.close()
    assert upgrade_schema(db) == (LATEST, [])


def test_a_database_newer_than_the_collector_is_refused(db: str) -> None:
    store = open_store(db)
    store.close()
    if db.startswith("postgresql://"):
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("INSERT INTO schema_version VALUES (%s, 'from the future', 0)", (LATEST + 1,))
    else:
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO schema_version VALUES (?, 'from the future', 0)", (LATEST + 1,))
    with pytest.raises(SchemaError, match=f"schema version {LATEST + 1} is newer than this collector's"):
        open_store(db)
    with pytest.raises(SchemaError, match="upgrade the collector"):
        upgrade_schema(db)


def test_postgres_not_upgraded_is_refused_with_the_command_to_run(pg_url: str) -> None:
    with pytest.raises(
        SchemaError, match=r"schema version 0, this collector needs \d+: run `csu-collector db upgrade"
    ):
        open_store(pg_url)
    with pytest.raises(SchemaError, match="db upgrade"):
        open_store(pg_url, readonly=True)
    before, applied = upgrade_schema(pg_url)
    assert (before, [m.version for m in applied]) == (0, [m.version for m in MIGRATIONS])
    open_store(pg_url).close()


def test_a_pre_versioning_sqlite_file_is_adopted_and_upgraded(tmp_path: Path) -> None:
    """A file written before the schema had versions: read-only opens refuse it; `serve` (writable)
    upgrades it, keeping its rows, and a start repeated with another ts keeps only the first."""
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        for statement in MIGRATIONS[0].sql(SQLITE):
            conn.execute(statement)
        row = (
            "INSERT INTO motion_events (site, device, camera, event_id, phase, ts, start_ts, score, boxes, "
            "zones, stored_at) VALUES ('s1', 'd1', 'cam0', 'e1', 'start', ?, ?, 0.5, '[]', '[]', 0)"
        )
        conn.execute(row, (NOW, NOW))
        conn.execute(row, (NOW + 1, NOW))
    with pytest.raises(SchemaError, match="schema version 0"):
        open_store(path, readonly=True)
    store = open_store(path)
    try:
        assert store.schema_version() == LATEST
        assert [(e.event_id, e.ts) for e in store.events()] == [("e1", NOW)]
    finally:
        store.close()


def test_both_engines_get_the_same_tables_and_columns(tmp_path: Path, pg_url: str) -> None:
    upgrade_schema(pg_url)
    path = tmp_path / "c.sqlite"
    open_store(path).close()
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        lite = {
            (t, c[1])
            for t in tables
            if not t.startswith("sqlite_")
            for c in conn.execute(f"PRAGMA table_info({t})")
        }
        lite_indexes = {
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
        }
    with psycopg.connect(pg_url) as conn:
        pg = set(
            conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
            ).fetchall()
        )
        pg_indexes = {
            r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")
        }
    assert lite == pg
    assert lite_indexes <= pg_indexes  # PostgreSQL also names its primary keys and unique constraints


def test_a_sqlite_path_with_uri_characters_opens_read_only(tmp_path: Path) -> None:
    path = tmp_path / "site #1 ?100%.sqlite"
    writer = open_store(path)
    writer.write([motion("s1", "d1", "e1")], NOW)
    writer.close()
    reader = open_store(path, readonly=True)
    try:
        assert [e.event_id for e in reader.events()] == ["e1"]
    finally:
        reader.close()
    stray = [p.name for p in tmp_path.iterdir() if not p.name.startswith(path.name)]  # -wal, -shm are its own
    assert stray == [], "no file made from a piece of the path"


def test_unreachable_postgres_is_named_without_its_password() -> None:
    url = "postgresql://csu:s3cret@127.0.0.1:1/collector"
    with pytest.raises(StoreUnavailable) as caught:
        open_store(url)
    assert "postgresql://csu:***@127.0.0.1:1/collector" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert redact("postgresql://csu@db/x") == "postgresql://csu@db/x"
