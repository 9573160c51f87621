"""Reading the audit log: which records form the chain, which do not, whether the head is anchored, repairs.

The lifecycle topic is written by one fenced writer, but anyone who can produce to it can add records, and
an exported copy can be edited. Each record, in log order, is one of:

===========  ==========================================================================================
link         a valid entry (signed by a system key under ``Context.AUDIT_ENTRY``, a well-formed
             :class:`~governance.lifecycle.audit.AuditEntry`) that extends the chain: ``seq`` is the
             head's plus one and ``prev_hash`` the head's hash
foreign      anything that is not a valid entry: not JSON, not a signed record, unsigned, an untrusted or
             revoked key (signed at or after the revocation, or after the entry that recorded it),
             altered, not an entry
duplicate    a valid entry whose bytes are already in the chain (a replayed record)
void         a valid entry a signed repair declared void (a fork's other branch, entries after a gap)
break        a valid entry that is none of the above: a fork, a gap, a reordering, a re-signed edit;
             reading stops there
===========  ==========================================================================================

Foreign records and duplicates never become part of the chain and never brick the consumer: it starts,
reports them, and acknowledges them in a signed entry (``repair.acknowledged``, by digest). A break
does stop it: it refuses to start until ``shadowgate audit repair`` appends a signed repair entry that
names the void entries and continues the chain from the chosen head
(:func:`governance.lifecycle.repair.plan_repair`). The head is
anchored by signed checkpoints (:mod:`governance.lifecycle.checkpoint`): a log that does not reach the
newest one, or differs from it, is truncated or replaced (:func:`check_anchor`).

Guarantees: pure (time and trust passed in); :func:`verify_chain` names the FIRST problem in log order
(an unacknowledged foreign record or duplicate, or the break) with the entries verified before it, then
the anchor; every record is verified once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson

from governance.contract.publishing import decode_record
from governance.crypto.keys import TrustStore
from governance.crypto.record import verify_record
from governance.crypto.schedule import DEFAULT_SCHEDULE, Phase
from governance.crypto.signing import Context
from governance.errors import CryptoError, EventValidationError
from governance.lifecycle.audit import GENESIS, AuditEntry, entry_hash, parse_entry
from governance.lifecycle.checkpoint import Checkpoint

__all__ = ["NO_CHECKPOINT", "Anomaly", "ChainReport", "ChainWalk", "Item", "check_anchor", "read_items", "verify_chain",
           "voided", "walk"]

AnomalyKind = Literal["foreign", "duplicate", "void"]
NO_CHECKPOINT = "no checkpoint anchors the head (a truncated tail would go unnoticed)"


@dataclass(frozen=True)
class Item:
    """One record of the log, verified once: ``entry`` is set when it is a valid entry, else ``problem``."""

    index: int
    offset: int | None
    digest: str
    entry: AuditEntry | None = None
    hash: str | None = None
    key_id: str | None = None
    claimed_seq: int | None = None
    problem: str | None = None

    @property
    def where(self) -> str:
        return f"record #{self.index}" + (f" (offset {self.offset})" if self.offset is not None else "")


@dataclass(frozen=True)
class Anomaly:
    """A record that is not part of the chain; ``acknowledged_by`` is the seq of the entry that noted it."""

    item: Item
    kind: AnomalyKind
    detail: str
    acknowledged_by: int | None = None

    def __str__(self) -> str:
        note = f"acknowledged at seq {self.acknowledged_by}" if self.acknowledged_by is not None else "NOT acknowledged"
        return f"{self.kind} {self.item.where}, digest {self.item.digest[:16]}: {self.detail} [{note}]"


@dataclass(frozen=True)
class Break:
    item: Item
    problem: str


@dataclass
class ChainWalk:
    """The result of :func:`walk`: the chain's links in order, what is not in it, and the first break."""

    links: list[Item] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    broken: Break | None = None

    @property
    def seq(self) -> int:
        return self.links[-1].entry.seq if self.links and self.links[-1].entry else -1

    @property
    def head(self) -> str:
        return _head_of(self.links)

    def unacknowledged(self) -> list[Anomaly]:
        return [a for a in self.anomalies if a.acknowledged_by is None]

    def entries(self) -> list[tuple[AuditEntry, str]]:
        """``(entry, hash)`` of every link, in order: what the state is folded from."""
        return [(item.entry, item.hash) for item in self.links if item.entry is not None and item.hash is not None]


def _head_of(links: Sequence[Item]) -> str:
    return (links[-1].hash or GENESIS) if links else GENESIS


def _digest(item: bytes | Mapping[str, Any]) -> str:
    data = item if isinstance(item, bytes) else orjson.dumps(item, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(data).hexdigest()


def _read(index: int, offset: int | None, raw: bytes | Mapping[str, Any], trust_store: TrustStore, now: datetime,
          phase: Phase) -> Item:
    digest = _digest(raw)
    try:
        record = decode_record(raw) if isinstance(raw, bytes) else dict(raw)
    except EventValidationError as exc:
        return Item(index, offset, digest, problem=f"EventValidationError: {exc}")
    payload = record.get("payload")
    claimed = payload.get("seq") if isinstance(payload, dict) else None
    claimed_seq = claimed if isinstance(claimed, int) else None
    try:
        entry = parse_entry(verify_record(record, Context.AUDIT_ENTRY, trust_store, now, phase))
    except (CryptoError, EventValidationError) as exc:
        return Item(index, offset, digest, claimed_seq=claimed_seq, problem=f"{type(exc).__name__}: {exc}")
    return Item(index, offset, digest, entry, entry_hash(record), str(record["signature"]["key_id"]), entry.seq)


def read_items(records: Iterable[bytes | Mapping[str, Any]], trust_store: TrustStore, now: datetime,
               phase: Phase | None = None, offsets: Sequence[int] | None = None) -> list[Item]:
    """Every record verified and classified as an entry or not (``offsets``: where each was read, if known)."""
    phase = phase if phase is not None else DEFAULT_SCHEDULE.phase_at(now)
    return [_read(i, offsets[i] if offsets is not None else None, raw, trust_store, now, phase)
            for i, raw in enumerate(records)]


def voided(items: Sequence[Item]) -> dict[str, int]:
    """Hash of every entry a valid repair entry declared void -> the seq of that repair."""
    return {void.hash: item.entry.seq for item in items if item.entry is not None and item.entry.repair is not None
            for void in item.entry.repair.void}


def _break_problem(entry: AuditEntry, seq: int, head: str, index: int) -> str:
    if entry.seq <= seq:
        return (f"seq {entry.seq} where {seq + 1} was expected: a second, different entry {entry.seq} "
                "(a fork: a rival writer, or an entry replaced or reordered)")
    if entry.seq > seq + 1:
        return f"seq {entry.seq} where {seq + 1} was expected (an entry is missing, inserted or reordered)"
    return f"prev_hash {entry.prev_hash[:16]}... does not match entry #{index - 1}'s hash {head[:16]}..."


def walk(items: Sequence[Item]) -> ChainWalk:
    """Follow the chain through ``items`` in order (see the module table); stops at the first break."""
    voids, result = voided(items), ChainWalk()
    in_chain: dict[str, int] = {}
    revoked: dict[str, int] = {}
    for item in items:
        entry = item.entry
        if entry is None or item.hash is None:
            result.anomalies.append(Anomaly(item, "foreign", item.problem or "not an entry"))
        elif item.hash in voids:
            result.anomalies.append(Anomaly(item, "void", f"entry seq {entry.seq} declared void",
                                            voids[item.hash]))
        elif item.key_id in revoked:
            detail = f"signed by key {item.key_id}, whose revocation the chain recorded at seq {revoked[item.key_id]}"
            result.anomalies.append(Anomaly(item, "foreign", detail))
        elif entry.seq == result.seq + 1 and entry.prev_hash == result.head:
            result.links.append(item)
            in_chain[item.hash] = entry.seq
            revoked.update({r.key_id: entry.seq for r in entry.revoked})
        elif item.hash in in_chain:
            result.anomalies.append(Anomaly(item, "duplicate", f"a copy of entry seq {in_chain[item.hash]}"))
        else:
            result.broken = Break(item, _break_problem(entry, result.seq, result.head, len(result.links)))
            break
    acks = {ack.digest: link.entry.seq for link in result.links if link.entry is not None and link.entry.repair
            for ack in link.entry.repair.acknowledged}
    result.anomalies = [a if a.kind == "void" else Anomaly(a.item, a.kind, a.detail, acks.get(a.item.digest))
                        for a in result.anomalies]
    return result


def check_anchor(chain: ChainWalk, checkpoints: Sequence[Checkpoint]) -> str | None:
    """None if the newest checkpoint (highest seq, after the last repair that superseded older ones) is an
    entry of the chain; else what is wrong. No checkpoint at all is a problem only for a non-empty log."""
    considered = list(checkpoints)
    superseding = [link for link in chain.links if link.entry is not None and link.entry.repair is not None
                   and link.entry.repair.supersedes_checkpoints]
    if superseding:
        last = superseding[-1]
        marks = [i for i, c in enumerate(considered) if (c.seq, c.head) == (last.claimed_seq, last.hash)]
        considered = considered[marks[-1]:] if marks else []
    if not considered:
        if chain.seq < 0:
            return None
        return NO_CHECKPOINT
    newest = max(considered, key=lambda c: c.seq)
    where = f"checkpoint at offset {newest.offset}" if newest.offset is not None else "the newest checkpoint"
    if newest.seq > chain.seq:
        return (f"{where} anchors seq {newest.seq} (head {newest.head[:16]}...), but the log ends at seq "
                f"{chain.seq}: entries {chain.seq + 1}..{newest.seq} are missing (a truncated tail)")
    link = chain.links[newest.seq] if newest.seq >= 0 else None
    actual = link.hash if link is not None else GENESIS
    if actual != newest.head:
        return (f"{where} anchors seq {newest.seq} with hash {newest.head[:16]}..., but the log's entry "
                f"{newest.seq} hashes to {(actual or '')[:16]}... (the log was replaced or forked)")
    return None


@dataclass(frozen=True)
class ChainReport:
    """The result of :func:`verify_chain`: ``ok``, or the first problem; ``entries`` / ``head`` are the
    chain verified before it (all of it when ``ok``)."""

    ok: bool
    entries: int
    head: str
    broken_index: int | None = None
    broken_seq: int | None = None
    problem: str | None = None
    anomalies: tuple[Anomaly, ...] = ()
    repairs: tuple[int, ...] = ()
    anchored: str | None = None

    def __str__(self) -> str:
        if self.ok:
            line = f"audit log OK: {self.entries} entries, head {self.head}"
        elif self.broken_index is None:
            line = f"audit log BROKEN: {self.problem} ({self.entries} entries verified)"
        else:
            where = f"entry #{self.broken_index}" + (f" (seq {self.broken_seq})" if self.broken_seq is not None else "")
            line = f"audit log BROKEN at {where}: {self.problem} ({self.entries} entries before it verified)"
        notes = [f"  {a}" for a in self.anomalies]
        notes += [f"  repair at seq {seq}" for seq in self.repairs]
        if self.anchored:
            notes.append(f"  {self.anchored}")
        return "\n".join([line, *notes])


def report(chain: ChainWalk, checkpoints: Sequence[Checkpoint] | None = None) -> ChainReport:
    """The verdict on a walked log (``checkpoints`` None: the anchor is not checked)."""
    problems: list[tuple[int, int | None, str]] = [(a.item.index, a.item.claimed_seq, str(a))
                                                   for a in chain.unacknowledged()]
    if chain.broken is not None:
        problems.append((chain.broken.item.index, chain.broken.item.claimed_seq, chain.broken.problem))
    repairs = tuple(i.entry.seq for i in chain.links if i.entry is not None and i.entry.repair is not None)
    anchor = check_anchor(chain, checkpoints) if checkpoints is not None else None
    anchored = None if checkpoints is None or anchor is not None else "the newest checkpoint matches the log"
    extra = {"anomalies": tuple(chain.anomalies), "repairs": repairs, "anchored": anchored}
    if problems:
        index, seq, problem = min(problems, key=lambda p: p[0])
        before = [link for link in chain.links if link.index < index]
        return ChainReport(False, len(before), _head_of(before), index, seq, problem, **extra)  # type: ignore[arg-type]
    if anchor is not None:
        return ChainReport(False, len(chain.links), chain.head, problem=anchor, **extra)  # type: ignore[arg-type]
    return ChainReport(True, len(chain.links), chain.head, **extra)  # type: ignore[arg-type]


def verify_chain(records: Iterable[bytes | Mapping[str, Any]], trust_store: TrustStore, now: datetime,
                 phase: Phase | None = None, *, checkpoints: Sequence[Checkpoint] | None = None,
                 offsets: Sequence[int] | None = None) -> ChainReport:
    """Verify every record, follow the chain and (with ``checkpoints``) its anchor; report the first problem."""
    return report(walk(read_items(records, trust_store, now, phase, offsets)), checkpoints)
