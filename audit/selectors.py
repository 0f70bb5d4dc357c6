from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import OuterRef, QuerySet, Subquery

from audit.models import AuditStamp
from audit.services import stamp_hash
from audit.subjects import subjects


def stamps_for_job(*, job_id: str) -> QuerySet[AuditStamp]:
    return AuditStamp.objects.filter(job_id=job_id).order_by("seq")


@dataclass
class BrokenLink:
    """The first stamp of a chain that does not verify, and why."""

    job_id: str
    seq: int
    problem: str  # hash | prev_hash | seq_gap | tail_status | no_stamps
    expected: str
    stored: str

    def __str__(self) -> str:
        return f"{self.job_id} seq {self.seq}: {self.problem} expected {self.expected!r}, stored {self.stored!r}"


@dataclass
class VerifyReport:
    chains: int = 0
    stamps: int = 0
    jobs_checked: int = 0
    broken: list[BrokenLink] = field(default_factory=list)
    broken_total: int = 0

    @property
    def ok(self) -> bool:
        return self.broken_total == 0


_FIELDS = ("job_id", "seq", "created_at", "actor", "event", "from_status", "to_status", "details",
           "prev_hash", "hash")


def audit_verify(*, job_id: str | None = None, chunk_size: int = 2000, keep: int = 20) -> VerifyReport:
    """Recompute every hash chain (or one job's) and compare each job's status with its trail.

    Steps: (1) stream stamps ordered by (job id, seq) with ``.iterator()`` — constant memory and
    no long lock on a busy database; (2) per chain, seq must run 1, 2, 3…, each ``prev_hash``
    must equal the previous stamp's hash, and each stored hash must equal ``stamp_hash`` of the
    stamp's content; (3) per row of every registered subject
    (``audit.subjects``; the jobs app registers ``Job``), the last stamp that set a status must name the job's
    current status (a deleted or forged tail, or a status changed behind the platform's
    back, shows here). Only the first break of each chain is reported (later links of a broken
    chain follow from it); ``keep`` bounds how many are listed, ``broken_total`` counts all.

    Stamps added while this runs extend chains past what was read; they are checked next time.
    """
    report = VerifyReport()
    qs = AuditStamp.objects.order_by("job_id", "seq")
    if job_id is not None:
        qs = qs.filter(job_id=job_id)
    current: str | None = None
    expect_seq, prev_hash, chain_broken = 1, "", False

    def broken(link: BrokenLink) -> None:
        report.broken_total += 1
        if len(report.broken) < keep:
            report.broken.append(link)

    for row in qs.values_list(*_FIELDS).iterator(chunk_size=chunk_size):
        s = dict(zip(_FIELDS, row, strict=True))
        if s["job_id"] != current:
            current, expect_seq, prev_hash, chain_broken = s["job_id"], 1, "", False
            report.chains += 1
        report.stamps += 1
        if chain_broken:
            continue
        link: BrokenLink | None = None
        recomputed = stamp_hash(
            job_id=s["job_id"], seq=s["seq"], created_at=s["created_at"], actor=s["actor"], event=s["event"],
            from_status=s["from_status"], to_status=s["to_status"], details=s["details"],
            prev_hash=s["prev_hash"],
        )
        if s["seq"] != expect_seq:
            link = BrokenLink(s["job_id"], s["seq"], "seq_gap", str(expect_seq), str(s["seq"]))
        elif s["prev_hash"] != prev_hash:
            link = BrokenLink(s["job_id"], s["seq"], "prev_hash", prev_hash, s["prev_hash"])
        elif recomputed != s["hash"]:
            link = BrokenLink(s["job_id"], s["seq"], "hash", recomputed, s["hash"])
        if link is not None:
            chain_broken = True
            broken(link)
        expect_seq, prev_hash = s["seq"] + 1, s["hash"]

    for subject in subjects():
        last_status = Subquery(
            AuditStamp.objects.filter(job_id=OuterRef("pk")).exclude(to_status="")
            .order_by("-seq").values("to_status")[:1]
        )
        last_seq = Subquery(
            AuditStamp.objects.filter(job_id=OuterRef("pk")).exclude(to_status="")
            .order_by("-seq").values("seq")[:1]
        )
        rows = subject.model._default_manager.order_by()
        if job_id is not None:
            rows = rows.filter(pk=job_id)
        for pk, status, stamped, seq in (
            rows.annotate(stamped=last_status, stamped_seq=last_seq)
            .values_list("pk", subject.status_field, "stamped", "stamped_seq")
            .iterator(chunk_size=chunk_size)
        ):
            report.jobs_checked += 1
            if stamped is None:
                broken(BrokenLink(pk, 0, "no_stamps", status, ""))
            elif stamped != status:
                broken(BrokenLink(pk, seq, "tail_status", status, stamped))
    return report
