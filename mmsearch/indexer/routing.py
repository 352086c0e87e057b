"""Which records go on to be decoded: the rules both engines apply, in read order.

A record without an item is rejected; an id read earlier in the run is a
duplicate (the first occurrence wins); an id already in the index is skipped,
rejected or replaced according to the `existing` policy. The local engine
routes every record with one `Router`. The Ray engine routes each partition with
its own `Router` and the driver then applies `claim` across partitions in read
order, which gives the same outcome as one router over the whole input.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from .prepare import Rejection
from .sources import Record

DUPLICATE = "duplicate id: already read earlier in this run"
EXISTS = "id already in the index (use --on-duplicate update to replace it)"

PREPARE, SKIP, REJECT = "prepare", "skip", "reject"


@dataclass(frozen=True)
class Route:
    action: str                            # PREPARE, SKIP or REJECT
    rejection: Optional[Rejection] = None  # when REJECT
    claims: bool = False                   # the record's id now counts as read in this run
    updated: bool = False                  # it replaces an id already in the index


class Router:
    def __init__(self, existing: str, exists: Callable[[str], bool]):
        self.existing = existing   # skip, reject or update (BuildSettings.existing)
        self.exists = exists
        self.seen: set = set()

    def claim(self, item_id: str, where: str) -> Optional[Rejection]:
        """None when `item_id` is read for the first time (and remember it), else the rejection."""
        if item_id in self.seen:
            return Rejection(item_id, where, DUPLICATE)
        self.seen.add(item_id)
        return None

    def route(self, rec: Record) -> Route:
        if rec.item is None:
            return Route(REJECT, Rejection(rec.id, rec.where, rec.error or "unreadable entry"))
        item_id = rec.item.id
        duplicate = self.claim(item_id, rec.where)
        if duplicate is not None:
            return Route(REJECT, duplicate)
        if not self.exists(item_id):
            return Route(PREPARE, claims=True)
        if self.existing == "skip":
            return Route(SKIP, claims=True)
        if self.existing == "reject":
            return Route(REJECT, Rejection(item_id, rec.where, EXISTS), claims=True)
        return Route(PREPARE, claims=True, updated=True)
