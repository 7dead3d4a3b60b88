"""`edge-agent demo`: a whole simulated point and its CSU on this machine, on embedded defaults.

Two synthetic cameras with masks and motion zones, a real local mosquitto, the device agent (recording,
MQTT, clip server) and the CSU collector following it. A status line shows each camera's fps, drops, open
events and sealed segments; motion events are logged. When it ends (Ctrl-C or `--duration`), the tour
finishes the way an investigator would: the collector fetches the last seconds of a camera, verifies the
signatures and the hash chain, decrypts and writes an MP4 with its evidence manifest.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from edge_agent.collector.commands.cli import main as collector_main
from edge_agent.collector.console.accounts import Passwords, Role
from edge_agent.collector.console.data import Account, open_console_data
from edge_agent.collector.console.server import ConsoleOptions, ConsoleServer
from edge_agent.collector.ingest import Ingestor, parse_broker_url
from edge_agent.collector.paths import device_keys_dir
from edge_agent.collector.store import Store, open_store
from edge_agent.device.agent import Agent
from edge_agent.formats.config import AgentConfig, parse_config
from edge_agent.formats.keys import CsuKeyPaths, KeyPairPaths, generate_csu_keys, generate_device_key
from edge_agent.link.localbroker import LocalBroker

log = logging.getLogger(__name__)
MARKER = ".edge-agent-demo"
SITE, DEVICE = "demo-site", "demo-pi"
FETCH_SECONDS = 20.0
CONSOLE_PORT = 8080


def demo_config(root: Path, broker_port: int, device: KeyPairPaths, csu: CsuKeyPaths) -> dict[str, Any]:
    """The demo site's config document: two cameras, one continuous, one recording on motion."""
    street = {"name": "street", "points": [[0.0, 0.3], [1.0, 0.3], [1.0, 1.0], [0.0, 1.0]]}
    return {
        "site_id": SITE,
        "device_id": DEVICE,
        "cameras": [
            {
                "id": "entrance",
                "source": {"kind": "synthetic", "seed": 1, "objects": 2},
                "resolution": [640, 360],
                "fps": 10,
                "masks": [
                    {"name": "window-1", "points": [[0.05, 0.05], [0.3, 0.05], [0.3, 0.3], [0.05, 0.3]]},
                    {
                        "name": "door-3",
                        "points": [[0.75, 0.1], [0.95, 0.1], [0.95, 0.45], [0.75, 0.45]],
                        "mode": "blur",
                    },
                ],
                "motion": {"zones": [street], "end_seconds": 3.0},
                "recording": "continuous",
            },
            {
                "id": "square",
                "source": {"kind": "synthetic", "seed": 2, "objects": 1},
                "resolution": [640, 360],
                "fps": 10,
                "masks": [
                    {"name": "garden", "points": [[0.6, 0.0], [1.0, 0.0], [1.0, 0.25]], "mode": "pixelate"}
                ],
                "motion": {"end_seconds": 3.0},
                "recording": "motion",
            },
        ],
        "storage": {
            "path": str(root / "device" / "segments"),
            "segment_seconds": 5,
            "min_free_bytes": 50_000_000,
        },
        "mqtt": {
            "host": "127.0.0.1",
            "port": broker_port,
            "status_interval_s": 5,
            "outbox_path": str(root / "device" / "outbox.sqlite"),
        },
        "clip_server": {"bind": "127.0.0.1", "port": 0, "audit_log": str(root / "device" / "audit.jsonl")},
        "keys": {
            "device_key": str(device.private),
            "csu_sealing_public_key": str(csu.sealing.public),
            "collector_public_keys": [str(csu.signing.public)],
        },
    }


def prepare_folder(root: Path) -> None:
    """Start from an empty folder; refuse to wipe one the demo did not create."""
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).exists():
            raise SystemExit(f"demo: {root} is not empty and not a demo folder; choose another --dir")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("created by edge-agent demo; wiped at the next run\n")


def status_line(agent: Agent, store: Store, elapsed: float) -> str:
    """One line: per camera fps, drops, open event and segments; then outbox and collector."""
    parts = [f"[{elapsed:6.1f}s]"]
    for entry in agent.camera_statuses():
        segments = entry.recorder.segments if entry.recorder is not None else 0
        parts.append(
            f"{entry.id}: {entry.state} {entry.fps:4.1f}fps drops {entry.drops}"
            f" event {'open' if entry.event_open else '-   '} segs {segments}"
        )
    pending = agent.mqtt.stats().outbox_pending if agent.mqtt else 0
    parts.append(f"outbox {pending} | CSU events {len(store.events(site=SITE))}")
    return " | ".join(parts)


def demo(args: argparse.Namespace) -> int:
    """Run the simulated site, then fetch and verify a clip as the CSU would."""
    root = args.dir.resolve()
    prepare_folder(root)
    csu_keys = generate_csu_keys(root / "csu" / "keys")
    device_key = generate_device_key(root / "device" / "keys")
    with LocalBroker() as broker:
        document = demo_config(root, broker.port, device_key, csu_keys)
        config_path = root / "device" / "site.yaml"
        config_path.write_text(yaml.safe_dump(document, sort_keys=False))
        config = parse_config(document)
        store = open_store(root / "csu" / "collector.sqlite")
        ingestor = Ingestor(store)
        ingestor.start(parse_broker_url(broker.url), client_id="demo-collector")
        agent = Agent(config, config_path, hotplug=False)
        agent.start()
        console, password = start_console(root, broker.url, device_key)
        _banner(root, broker.url, agent)
        print(f"  console {console.url}  (login: demo / {password})", file=sys.stderr)
        started = time.monotonic()
        try:
            _run_until(agent, store, started, args.duration)
        except KeyboardInterrupt:
            print("\nstopping: fetching a clip first, as an investigator would", file=sys.stderr)
        try:
            _fetch_tour(root, config, agent, csu_keys, device_key)
        finally:
            console.stop()
            agent.stop()
            ingestor.stop()
            store.close()
    print(f"\ndemo files kept in {root} (config: device/site.yaml, collector: csu/)")
    return 0


def start_console(root: Path, broker_url: str, device: KeyPairPaths) -> tuple[ConsoleServer, str]:
    """The CSU console on the demo store, with an admin `demo`: (the server, its password)."""
    devices = device_keys_dir(root / "csu" / "keys") / SITE
    devices.mkdir(parents=True, exist_ok=True)
    shutil.copy(device.public, devices / f"{DEVICE}.pub")
    password = secrets.token_urlsafe(9)
    db = root / "csu" / "collector.sqlite"
    data = open_console_data(db)
    try:
        data.add_user(Account("demo", Role.ADMIN.value, Passwords().hash(password), time.time()))
    finally:
        data.close()
    options = ConsoleOptions(
        db=db,
        keys=root / "csu" / "keys",
        device_keys=device_keys_dir(root / "csu" / "keys"),
        audit=root / "csu" / "audit.jsonl",
        exports=root / "csu" / "exports",
        broker=parse_broker_url(broker_url),
    )
    for port in (CONSOLE_PORT, 0):  # 8080 when free, any port otherwise
        console = ConsoleServer(options, "127.0.0.1", port)
        try:
            console.start()
        except OSError:
            console.stop()
            continue
        return console, password
    raise SystemExit("demo: the console could not listen on 127.0.0.1")


def _banner(root: Path, broker_url: str, agent: Agent) -> None:
    clip_url = agent.clip_server.local_url if agent.clip_server else "-"
    print(
        f"demo site {SITE}/{DEVICE} in {root}\n  broker {broker_url}, clip API {clip_url}\n"
        "  cameras: entrance (continuous, 2 masks, zone 'street'), square (records on motion, 1 mask)\n"
        "  Ctrl-C ends the run and fetches a verified clip",
        file=sys.stderr,
    )


def _run_until(agent: Agent, store: Store, started: float, duration: float) -> None:
    interactive = sys.stderr.isatty()
    last_print = 0.0
    while duration <= 0 or time.monotonic() - started < duration:
        time.sleep(0.5)
        agent.tick()
        elapsed = time.monotonic() - started
        if interactive:
            print("\r" + status_line(agent, store, elapsed), end="", file=sys.stderr, flush=True)
        elif elapsed - last_print >= 5.0:
            print(status_line(agent, store, elapsed), file=sys.stderr, flush=True)
            last_print = elapsed
    if interactive:
        print(file=sys.stderr)


def _fetch_tour(root: Path, config: AgentConfig, agent: Agent, csu: CsuKeyPaths, device: KeyPairPaths) -> int:
    """Fetch the newest sealed seconds of `entrance` through the collector; its exit code."""
    assert agent.ring is not None
    segments = agent.ring.segments("entrance", 0.0, time.time() + 3600)
    if not segments:
        print("no sealed segment yet: run the demo a little longer to fetch a clip", file=sys.stderr)
        return 1
    end = segments[-1].end_ts
    start = max(segments[0].start_ts, end - FETCH_SECONDS)
    export = root / "csu" / "exports" / "entrance-demo"
    common = [
        "--site", SITE, "--device", DEVICE,
        "--store", str(root / "csu" / "collector.sqlite"),
        "--keys", str(csu.signing.private.parent),
        "--audit", str(root / "csu" / "audit.jsonl"),
    ]  # fmt: skip
    fetch = [
        "fetch-clip", *common, "--device-key", str(device.public), "--camera", "entrance",
        "--start", f"{start:.3f}", "--end", f"{end:.3f}", "--requisition", "DEMO-REQ-0001",
        "-o", str(export), "--no-progress",
    ]  # fmt: skip
    print(f"\ncsu-collector fetch-clip --camera entrance ({end - start:.1f} s) -> {export}", file=sys.stderr)
    code = collector_main(fetch)
    if code == 0:
        code = collector_main(["verify", str(export), "--keys", str(csu.signing.private.parent)])
    collector_main(
        ["events", "--db", str(root / "csu" / "collector.sqlite"), "--site", SITE, "--since", "1h"]
    )
    return code
