"""`edge-hub enroll-import PATH`: answer the enrollment requests devices wrote on a stick.

The same steps as the online desk (hub.fleet.enrollment.EnrollmentDesk.handle), but the
token is shown by proof (edge_agent.protocol.bundle.enrollment_proof) instead of sent: the
hub checks the proof against the token hashes it keeps, spends the token, issues the
certificate for the CSR, records the device as enrolled, and writes the answer with every
root version beside the request. A refused request leaves its token usable and writes no
answer; the reasons come back to the operator.
"""

from __future__ import annotations

import hmac
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from edge_agent.protocol.bundle import (
    ENROLL_DIR,
    MAX_ENROLL_FILE_BYTES,
    OfflineEnrollmentRequest,
    OfflineEnrollmentResponse,
    enrollment_proof,
)
from edge_agent.protocol.enrollment import EnrollmentResponse
from hub.fleet import registry
from hub.fleet.enrollment import EnrollmentDesk
from hub.fleet.identity import IdentityError


@dataclass
class EnrollSummary:
    enrolled: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def _read(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = handle.read(MAX_ENROLL_FILE_BYTES + 1)
    if len(data) > MAX_ENROLL_FILE_BYTES:
        raise ValueError(f"larger than {MAX_ENROLL_FILE_BYTES} bytes")
    return data


def answer_requests(
    stick: Path, desk: EnrollmentDesk, hub_url: str, roots: list[str]
) -> EnrollSummary:
    summary = EnrollSummary()
    folder = stick / ENROLL_DIR
    for path in sorted((folder / "requests").glob("*.json")):
        try:
            request = OfflineEnrollmentRequest.model_validate_json(_read(path))
            if path.stem != request.device_id:
                raise ValueError(f"the file is named {path.stem} but asks for {request.device_id}")
            answer = _answer(desk, request)
        except (ValidationError, ValueError, OSError, IdentityError) as exc:
            summary.refused.append(f"{path.name}: {exc}")
            continue
        response = OfflineEnrollmentResponse(answer=answer, hub_url=hub_url, roots=roots)
        out = folder / "responses" / f"{request.device_id}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(response.model_dump_json())
        summary.enrolled.append(request.device_id)
    return summary


def _answer(desk: EnrollmentDesk, request: OfflineEnrollmentRequest) -> EnrollmentResponse:
    def proves(token_sha256: str) -> bool:
        expected = enrollment_proof(token_sha256, request.device_id, request.csr_pem)
        return hmac.compare_digest(expected, request.proof)

    with desk.tokens.redeem_proof(request.device_id, proves) as device_id:
        certificate = desk.ca.issue_device_certificate(request.csr_pem.encode(), device_id)
        registry.enroll(desk.engine, device_id)
        download_token = desk.downloads.issue(device_id)
    return EnrollmentResponse(
        device_id=device_id,
        certificate_pem=certificate.decode(),
        ca_pem=desk.ca.ca_cert_path.read_text(),
        broker_url=desk.broker_url,
        director_keys=desk.director_keys(),
        tuf_root=desk.tuf_root.read_text(),
        download_token=download_token,
    )


def repository_roots(metadata_dir: Path) -> list[str]:
    paths = sorted(
        (p for p in metadata_dir.glob("*.root.json") if p.name.split(".")[0].isdigit()),
        key=lambda p: int(p.name.split(".")[0]),
    )
    return [p.read_text() for p in paths]
