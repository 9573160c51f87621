"""Planning the repair of a broken audit log (pure): which entries become void, where the chain continues.

:func:`plan_repair` takes the classified records of the log (:func:`governance.lifecycle.chain.read_items`)
and builds the tree of every valid entry that links back to the start, in log order (an entry's parent is
the entry its ``prev_hash`` names, one ``seq`` lower, written before it). Its leaves are the heads the chain
could continue from: one for a gap or a truncated tail, two or more for a fork. The chain continues from
the chosen head; every entry not on its path (the other branches, entries after a gap that link to nothing)
is void; foreign records and duplicates not yet acknowledged are acknowledged; and when the newest
checkpoint no longer describes the repaired chain, older checkpoints are superseded.
:func:`governance.service.repair.repair_log` writes the result as a signed entry.

Guarantees: pure; a fork is never resolved silently (ConfigError naming every head unless one is chosen);
after the repair entry, :func:`governance.lifecycle.chain.walk` finds a whole chain ending in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from governance.errors import ConfigError
from governance.lifecycle.audit import GENESIS, AcknowledgedRecord, Repair, VoidEntry
from governance.lifecycle.chain import ChainWalk, Item, check_anchor, voided
from governance.lifecycle.checkpoint import Checkpoint

__all__ = ["RepairPlan", "Tip", "plan_repair"]


@dataclass(frozen=True)
class Tip:
    """An entry the chain could continue from."""

    seq: int
    hash: str
    offset: int | None

    def __str__(self) -> str:
        where = f" at offset {self.offset}" if self.offset is not None else ""
        return f"seq {self.seq} head {self.hash}{where}"


@dataclass(frozen=True)
class RepairPlan:
    """What a repair entry says: the chain continues from ``head`` (None: from the start), ``void`` entries
    leave it, ``acknowledge`` records are noted; ``tips`` are every head one could choose."""

    head: Tip | None
    tips: tuple[Tip, ...]
    void: tuple[VoidEntry, ...]
    acknowledge: tuple[AcknowledgedRecord, ...]
    supersedes_checkpoints: bool

    @property
    def next_seq(self) -> int:
        return self.head.seq + 1 if self.head is not None else 0

    @property
    def prev_hash(self) -> str:
        return self.head.hash if self.head is not None else GENESIS

    def repair(self, reason: str, operator: str) -> Repair:
        return Repair(reason=reason, operator=operator, void=list(self.void), acknowledged=list(self.acknowledge),
                      supersedes_checkpoints=self.supersedes_checkpoints)


@dataclass
class _Node:
    item: Item
    parent: str | None
    revoked: frozenset[str]
    children: int = 0


def _tree(items: Sequence[Item]) -> tuple[dict[str, _Node], list[Item], list[AcknowledgedRecord]]:
    """Every valid entry that links back to the start (in log order), the orphans, the records to acknowledge."""
    voids = voided(items)
    acked = {a.digest for i in items if i.entry is not None and i.entry.repair is not None
             for a in i.entry.repair.acknowledged}
    nodes: dict[str, _Node] = {}
    orphans: list[Item] = []
    notes: list[AcknowledgedRecord] = []
    for item in items:
        entry = item.entry
        if entry is None or item.hash is None:
            if item.digest not in acked:
                notes.append(AcknowledgedRecord(digest=item.digest, offset=item.offset, kind="foreign",
                                                detail=(item.problem or "not an entry")[:512]))
            continue
        if item.hash in voids:
            continue
        if item.hash in nodes:
            if item.digest not in acked:
                notes.append(AcknowledgedRecord(digest=item.digest, offset=item.offset, kind="duplicate",
                                                detail=f"a copy of entry seq {entry.seq}"))
            continue
        parent = nodes.get(entry.prev_hash)
        linked = (entry.seq == 0 and entry.prev_hash == GENESIS) or (
            parent is not None and parent.item.claimed_seq == entry.seq - 1)
        if parent is not None and item.key_id in parent.revoked:
            notes.append(AcknowledgedRecord(digest=item.digest, offset=item.offset, kind="foreign",
                                            detail=f"signed by revoked key {item.key_id}"))
        elif linked:
            revoked = (parent.revoked if parent else frozenset()) | {r.key_id for r in entry.revoked}
            nodes[item.hash] = _Node(item, entry.prev_hash if parent else None, frozenset(revoked))
            if parent is not None:
                parent.children += 1
        else:
            orphans.append(item)
    return nodes, orphans, notes


def _choose(nodes: dict[str, _Node], tips: list[Tip], head: str | None) -> Tip | None:
    if head is not None:
        matches = [h for h in nodes if h.startswith(head.lower())] if len(head) >= 8 else []
        if len(matches) != 1:
            raise ConfigError(f"--head {head!r} matches {len(matches)} entries; give 8 or more hex digits of one of: "
                              + "; ".join(str(t) for t in tips))
        node = nodes[matches[0]].item
        return Tip(node.claimed_seq or 0, matches[0], node.offset)
    if len(tips) > 1:
        raise ConfigError("the log forks: choose the head the chain continues from with --head HASH, one of: "
                          + "; ".join(str(t) for t in tips))
    return tips[0] if tips else None


def plan_repair(items: Sequence[Item], checkpoints: Sequence[Checkpoint], head: str | None = None) -> RepairPlan:
    """The repair that makes ``items`` a whole chain again, continuing from ``head`` (a hash prefix of any entry
    that links back to the start; default: the only tip, ConfigError naming every tip when the log forks)."""
    nodes, orphans, notes = _tree(items)
    tips = sorted((Tip(n.item.claimed_seq or 0, h, n.item.offset) for h, n in nodes.items() if n.children == 0),
                  key=lambda t: (-t.seq, t.offset if t.offset is not None else -1))
    chosen = _choose(nodes, tips, head)
    path: set[str] = set()
    cursor = chosen.hash if chosen is not None else None
    while cursor is not None:
        path.add(cursor)
        cursor = nodes[cursor].parent
    void = [VoidEntry(seq=n.item.claimed_seq or 0, hash=h, offset=n.item.offset) for h, n in nodes.items()
            if h not in path]
    void += [VoidEntry(seq=o.claimed_seq or 0, hash=o.hash or "", offset=o.offset) for o in orphans]
    kept = ChainWalk(links=sorted((nodes[h].item for h in path), key=lambda i: i.index))
    supersede = bool(checkpoints) and check_anchor(kept, checkpoints) is not None
    return RepairPlan(chosen, tuple(tips), tuple(sorted(void, key=lambda v: v.seq)), tuple(notes), supersede)
