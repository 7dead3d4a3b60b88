"""Clip requests from the console: fetch, verify and export in the background, one job per request.

A job runs `edge_agent.collector.fetch.fetch_clip` (the same path as `csu-collector fetch-clip`: signed
download, verification, MP4 export, signed evidence manifest, audit line), then re-checks the export
directory with `verify_export` as a second, independent reading. Only a job whose bundle verified whole
and whose export re-checks intact is `verified`: only then may the page play its MP4 or hand out the
archive. A partial or rejected bundle is shown as such and never played.

Then the job checks the export's provenance as `csu-collector verify` does (`provenance.verify_export_clip`:
the C2PA manifest under the CSU CA, each frame against the device's signatures), so that the page shows
the words a court would read, problems included; that check informs, it does not decide what plays.
"""

from __future__ import annotations

import logging
import secrets
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.collector.console.devices import DeviceError, DeviceGateway
from edge_agent.collector.download import FetchError
from edge_agent.collector.evidence import CLIP_FILE, ClipRejected, verify_export
from edge_agent.collector.fetch import ClipRequest, CollectorKeys, fetch_clip
from edge_agent.collector.pki import CollectorCredential
from edge_agent.collector.progress import ProgressBar
from edge_agent.collector.provenance import Report, registered_device_keys, verify_export_clip
from edge_agent.formats.audit import AuditLog

log = logging.getLogger(__name__)

FINAL_STATES = ("verified", "rejected", "failed")
NOT_SIGNED = "not C2PA-signed: the collector has no certificate (csu-collector pki init)"


@dataclass(frozen=True)
class ProvenanceCheck:
    """The provenance check of a job's export: `csu-collector verify`'s report, or that there is no
    manifest to check (`signed` False: the collector has no certificate, so the export is not signed)."""

    signed: bool
    report: Report = field(default_factory=Report)

    @property
    def outcome(self) -> str:
        """`verified`, `not-verified` (the report names problems) or `not-signed`."""
        if not self.signed:
            return "not-signed"
        return "verified" if self.report.ok else "not-verified"

    @property
    def summary(self) -> str:
        """One line: the report's result (`result: VERIFIED`, or how many problems), or `NOT_SIGNED`."""
        return self.report.lines()[-1] if self.signed else NOT_SIGNED


def check_provenance(
    clip: Path, credential: CollectorCredential | None, device_keys: Path
) -> ProvenanceCheck:
    """Check an export's MP4 against the CSU CA of the collector's credential (the export was signed with
    it) and the device keys provisioned under `device_keys`; a check that cannot run is a problem."""
    if credential is None:
        return ProvenanceCheck(signed=False)
    try:
        report = verify_export_clip(clip, credential.ca_pem(), registered_device_keys(device_keys))
    except Exception as error:  # an unreadable key or file must show on the page, not end the thread
        log.exception("provenance check of %s failed", clip)
        report = Report(problems=[f"the check could not run: {type(error).__name__}: {error}"])
    return ProvenanceCheck(signed=True, report=report)


@dataclass
class ClipJob:
    """One clip request and how far it has got."""

    id: str
    user: str
    request: ClipRequest
    created_at: float
    export_dir: Path
    state: str = "queued"  # queued, downloading, verifying, verified, rejected, failed
    message: str = ""
    evidence: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    provenance: ProvenanceCheck | None = None  # once the export exists and was checked
    progress: ProgressBar = field(default_factory=lambda: ProgressBar("clip", enabled=False))

    @property
    def playable(self) -> bool:
        """Only a clip whose evidence says verified and whose export re-checked intact plays."""
        return (
            self.state == "verified"
            and self.evidence is not None
            and self.evidence.get("verification", {}).get("result") == "verified"
            and (self.export_dir / CLIP_FILE).exists()
        )

    @property
    def fraction(self) -> float:
        """Share of the bundle downloaded (0..1)."""
        if self.state in FINAL_STATES or self.state == "verifying":
            return 1.0
        total = self.progress.total
        return min(1.0, self.progress.done / total) if total else 0.0

    def summary(self) -> dict[str, Any]:
        """What the page polls while the job runs."""
        return {
            "id": self.id,
            "state": self.state,
            "message": self.message,
            "done": self.progress.done,
            "total": self.progress.total,
            "fraction": round(self.fraction, 4),
            "final": self.state in FINAL_STATES,
            "playable": self.playable,
        }


class ClipJobs:
    """Runs clip jobs in background threads and keeps them for the pages (newest first)."""

    def __init__(self, gateway: DeviceGateway, exports: Path, audit: AuditLog) -> None:
        self.gateway = gateway
        self.exports = exports
        self.audit = audit
        self._jobs: dict[str, ClipJob] = {}
        self._lock = threading.Lock()

    def submit(self, user: str, request: ClipRequest) -> ClipJob:
        """Start fetching `request` for `user` (the request names the user as officer)."""
        job_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)
        job = ClipJob(job_id, user, request, time.time(), self.exports / job_id)
        with self._lock:
            self._jobs[job_id] = job
        threading.Thread(target=self._run, args=(job,), name=f"clip-{job_id}", daemon=True).start()
        return job

    def get(self, job_id: str) -> ClipJob | None:
        """A job by id."""
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[ClipJob]:
        """Every job, newest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created_at, reverse=True)

    def _run(self, job: ClipJob) -> None:
        request = job.request
        try:
            endpoint = self.gateway.endpoint(request.site, request.device)
            keys = CollectorKeys(
                self.gateway.keys.signing,
                self.gateway.keys.sealing,
                self.gateway.device_key(request.site, request.device),
                self.gateway.keys.credential,
            )
            job.state = "downloading"
            with endpoint:
                outcome = fetch_clip(endpoint, request, keys, job.export_dir, self.audit, job.progress)
            job.state = "verifying"
            evidence, problems = verify_export(job.export_dir, [self.gateway.keys.signing.public_key()])
        except DeviceError as error:
            job.state, job.message = "failed", str(error)
            self.audit.append(action="console-clip", outcome="failed", user=job.user, detail=str(error))
            return
        except FetchError as error:
            job.state, job.message = "failed", str(error)
            return
        except ClipRejected as error:
            job.state, job.message = "rejected", str(error)
            job.problems = error.check.problems() if error.check is not None else [str(error)]
            return
        except Exception as error:  # the job's thread must leave a final state for the page
            log.exception("clip job %s failed", job.id)
            job.state, job.message = "failed", f"{type(error).__name__}: {error}"
            return
        # Before the final state: the page reloads when it sees one, and must find the check there.
        job.provenance = check_provenance(
            job.export_dir / CLIP_FILE, self.gateway.keys.credential, self.gateway.device_keys
        )
        job.evidence = evidence or outcome.evidence
        job.problems = problems + list(job.evidence.get("verification", {}).get("problems", []))
        result = job.evidence.get("verification", {}).get("result")
        if problems or result != "verified":
            job.state = "rejected"
            job.message = f"verification {result}: " + "; ".join(job.problems or ["export altered"])
        else:
            job.state = "verified"
            job.message = f"verified: {job.evidence.get('clip', {}).get('duration_s', 0)} s"
        self.audit.append(
            action="console-clip",
            outcome=job.state,
            user=job.user,
            job=job.id,
            requisition=request.requisition,
            provenance=job.provenance.outcome,
            provenance_problems=job.provenance.report.problems,
        )

    def archive(self, job: ClipJob) -> Path:
        """The whole export directory as one tar file (built once, beside the directory)."""
        path = self.exports / f"{job.id}.tar"
        if not path.exists():
            partial = path.with_name(path.name + ".part")
            with tarfile.open(partial, "w") as archive:
                archive.add(job.export_dir, arcname=job.id)
            partial.replace(path)
        return path
