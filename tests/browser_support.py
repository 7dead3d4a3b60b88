"""A whole CSU site for the console browser tests: broker, device agent process, collector, console.

The device runs as `edge-agent run` in its own process (so a test can SIGKILL it), on the demo's two
synthetic cameras; the collector ingests into a SQLite store; the console serves it with a command link
to the broker. Chromium is Debian's, driven headless by Selenium through Debian's chromedriver.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.collector.console.accounts import Passwords
from edge_agent.collector.console.app import ConsoleSettings
from edge_agent.collector.console.server import ConsoleOptions, ConsoleServer
from edge_agent.collector.ingest import Ingestor, parse_broker_url
from edge_agent.collector.store import open_store
from edge_agent.collector.store.console import Account
from edge_agent.commands.demo import DEVICE, SITE, demo_config
from edge_agent.formats.keys import generate_csu_keys, generate_device_key
from edge_agent.link.localbroker import MOSQUITTO, LocalBroker

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PASSWORD = "correct-horse-battery"
USERS = {"olivia": "operator", "ines": "investigator", "adam": "admin"}


def need_browser() -> None:
    """Skip with the reason when Chromium, its driver or mosquitto is missing."""
    for path, package in (
        (CHROMIUM, "chromium"),
        (CHROMEDRIVER, "chromium-driver"),
        (MOSQUITTO, "mosquitto"),
    ):
        if not path.exists():
            pytest.skip(f"{path} missing: install the {package} Debian package (scripts/bootstrap.sh)")


@contextmanager
def chromium(download_dir: Path | None = None) -> Iterator[Any]:
    """A headless Chromium with a fresh profile, quit afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = Path(tempfile.mkdtemp(prefix="csu-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests run as root, where Chromium's sandbox cannot start
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, step: float = 0.1) -> Any:
    """Poll `predicate` until it returns something true; AssertionError after `timeout`.

    An element that went stale (the page was replaced between finding it and reading it: a form's answer
    arriving, a live update swapping the table) counts as "not yet", not as a failure.
    """
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:g} s")
        time.sleep(step)


@dataclass
class ConsoleSite:
    """Everything running: the broker, the device process, the collector, the console."""

    root: Path
    broker: LocalBroker
    agent: subprocess.Popen[bytes]
    ingestor: Ingestor
    console: ConsoleServer
    db: Path

    @property
    def url(self) -> str:
        """The console's base URL."""
        return self.console.url

    def stop(self) -> None:
        """Stop everything that still runs."""
        self.console.stop()
        if self.agent.poll() is None:
            self.agent.terminate()
            try:
                self.agent.wait(20)
            except subprocess.TimeoutExpired:
                self.agent.kill()
        self.ingestor.stop()
        self.ingestor.store.close()
        self.broker.cleanup()


def add_users(db: Path, users: dict[str, str] = USERS, password: str = PASSWORD) -> None:
    """Create console users (one argon2 hash shared: the tests do not need one each)."""
    from edge_agent.collector.console.data import open_console_data

    data = open_console_data(db)
    hashed = Passwords().hash(password)
    try:
        for name, role in users.items():
            data.add_user(Account(name, role, hashed, time.time()))
    finally:
        data.close()


def start_site(
    root: Path, settings: ConsoleSettings | None = None, status_interval_s: float = 1.0
) -> ConsoleSite:
    """Start a broker, a device agent process on the demo cameras, the collector and the console."""
    broker = LocalBroker().start()
    csu = generate_csu_keys(root / "csu" / "keys")
    device = generate_device_key(root / "device" / "keys")
    registry = root / "csu" / "keys" / "devices" / SITE
    registry.mkdir(parents=True)
    shutil.copy(device.public, registry / f"{DEVICE}.pub")
    document = demo_config(root, broker.port, device, csu)
    document["mqtt"]["status_interval_s"] = status_interval_s
    document["location"] = {"lat": 48.8566, "lon": 2.3522, "label": "Hotel de Ville"}
    config = root / "device" / "site.yaml"
    config.write_text(yaml.safe_dump(document))
    db = root / "csu" / "collector.sqlite"
    store = open_store(db)
    ingestor = Ingestor(store)
    ingestor.start(parse_broker_url(broker.url), client_id=f"test-collector-{os.getpid()}")
    log = (root / "agent.log").open("wb")
    agent = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.commands.cli", "run", "--config", str(config), "--no-hotplug"],
        stderr=log,
        stdout=log,
    )
    add_users(db)
    options = ConsoleOptions(
        db=db,
        keys=root / "csu" / "keys",
        device_keys=root / "csu" / "keys" / "devices",
        audit=root / "csu" / "csu-audit.jsonl",
        exports=root / "csu" / "exports",
        broker=parse_broker_url(broker.url),
        settings=settings or ConsoleSettings(poll_s=0.2),
    )
    console = ConsoleServer(options, "127.0.0.1", 0)
    console.start()
    return ConsoleSite(root, broker, agent, ingestor, console, db)


def login(driver: Any, site: ConsoleSite, name: str, password: str = PASSWORD) -> None:
    """Log in through the form (a fresh cookie jar first)."""
    from selenium.webdriver.common.by import By

    driver.get(site.url + "/login")
    driver.delete_all_cookies()
    driver.get(site.url + "/login")
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login-button").click()
    # The answer (a new page, or the form again with its error) must be there before the next step.
    wait_until(
        lambda: (
            driver.execute_script("return document.readyState") == "complete"
            and (not driver.current_url.endswith("/login") or driver.find_elements(By.ID, "login-error"))
        )
    )
