"""Run the demo site headless and save a PNG of each console page: `python scripts/screenshots.py OUTDIR`.

The demo's broker, device agent (two synthetic cameras) and collector, the console on a free port, and
Debian's Chromium driven by Selenium: it logs in as the demo admin, takes a snapshot, fetches a clip,
places a hold, acknowledges an alert, and photographs every page on the way.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from edge_agent.collector.ingest import Ingestor, parse_broker_url
from edge_agent.collector.store import open_store
from edge_agent.commands.demo import DEVICE, SITE, demo_config, start_console
from edge_agent.device.agent import Agent
from edge_agent.formats.config import parse_config
from edge_agent.formats.keys import generate_csu_keys, generate_device_key
from edge_agent.link.localbroker import LocalBroker

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def browser(profile: Path) -> webdriver.Chrome:
    """Headless Chromium, 1440 px wide, with a fresh profile."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1440,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def shoot(driver: webdriver.Chrome, out: Path, name: str) -> None:
    """Save the whole page (its full height) as OUT/name.png."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1440, max(800, min(int(height) + 40, 4000)))
    path = out / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"  {path}")


def tour(driver: webdriver.Chrome, url: str, password: str, out: Path) -> None:
    """Visit every page as the demo admin, doing what each page is for."""
    wait = WebDriverWait(driver, 60)
    driver.get(url + "/login")
    shoot(driver, out, "login")
    driver.find_element(By.ID, "name").send_keys("demo")
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login-button").click()
    wait.until(lambda d: d.current_url.endswith("/fleet"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-online=yes]"))
    time.sleep(1.5)
    shoot(driver, out, "fleet")
    camera = f"{url}/camera?site={SITE}&device={DEVICE}&camera=entrance"
    driver.get(camera)
    driver.find_element(By.ID, "refresh-snapshot").click()
    wait.until(lambda d: d.find_elements(By.ID, "snapshot"))
    shoot(driver, out, "camera")
    driver.get(url + "/clips")
    end = time.time() - 7
    driver.execute_script(
        "document.getElementById('clip-start').value = arguments[0];"
        "document.getElementById('clip-end').value = arguments[1];",
        _utc(end - 8),
        _utc(end),
    )
    Select(driver.find_element(By.ID, "clip-camera")).select_by_value(f"{SITE}/{DEVICE}/entrance")
    driver.find_element(By.ID, "clip-requisition").send_keys("PV 2026/118-B")
    driver.find_element(By.ID, "clip-submit").click()
    wait.until(
        lambda d: d.find_elements(By.ID, "clip-video") or d.find_elements(By.ID, "verification-failed")
    )
    wait.until(
        lambda d: d.execute_script(
            "const v = document.getElementById('clip-video'); return !v || v.readyState >= 2"
        )
    )
    shoot(driver, out, "clip")
    driver.get(url + "/clips")
    shoot(driver, out, "clips")
    driver.get(url + "/holds")
    form = driver.find_element(By.ID, "hold-form")
    form.find_element(By.NAME, "camera").send_keys("entrance")
    driver.execute_script(
        "const f = document.getElementById('hold-form');"
        "f.start.value = arguments[0]; f.end.value = arguments[1];",
        _utc(end - 60),
        _utc(end),
    )
    form.find_element(By.NAME, "requisition").send_keys("PV 2026/118-B")
    form.find_element(By.CSS_SELECTOR, "button").click()
    wait.until(lambda d: "PV 2026/118-B" in d.find_element(By.ID, "holds").text)
    shoot(driver, out, "holds")
    driver.get(url + "/alerts")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.alert"))
    first = driver.find_element(By.CSS_SELECTOR, "tr.alert .comment-input")
    first.send_keys("seen on camera: <b>delivery van</b>")
    driver.find_element(By.CSS_SELECTOR, "tr.alert .ack-form button").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.alert .acked-by"))
    shoot(driver, out, "alerts")
    driver.get(url + "/audit")
    shoot(driver, out, "audit")
    driver.get(url + "/users")
    shoot(driver, out, "users")
    driver.get(url + "/clips/no-such-job")
    shoot(driver, out, "not-found")


def main(argv: list[str] | None = None) -> int:
    """Start the demo site, take the pictures, stop everything."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of recording before the tour")
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="csu-screens-"))
    csu = generate_csu_keys(root / "csu" / "keys")
    device = generate_device_key(root / "device" / "keys")
    with LocalBroker() as broker:
        document = demo_config(root, broker.port, device, csu)
        document["location"] = {"lat": 48.8566, "lon": 2.3522, "label": "Hotel de Ville"}
        config_path = root / "device" / "site.yaml"
        config_path.write_text(yaml.safe_dump(document))
        store = open_store(root / "csu" / "collector.sqlite")
        ingestor = Ingestor(store)
        ingestor.start(parse_broker_url(broker.url), client_id="screenshots-collector")
        agent = Agent(parse_config(document), config_path, hotplug=False)
        agent.start()
        console, password = start_console(root, broker.url, device)
        driver = browser(root / "chromium")
        try:
            print(f"recording {args.warmup:g} s before the tour...", file=sys.stderr)
            time.sleep(args.warmup)
            tour(driver, console.url, password, args.outdir)
        finally:
            driver.quit()
            console.stop()
            agent.stop()
            ingestor.stop()
            store.close()
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
