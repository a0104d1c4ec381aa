"""The frontend's product cache: a pure LRU with invalidation fencing, plus request coalescing.

A miss fetches from the catalog while other requests go on; if the catalog pushes an
invalidation for that name meanwhile, the fetched value may already be stale, so it must
not be stored. Each fill therefore remembers the name's generation when it starts and
stores its value only if no invalidation bumped the generation since (:meth:`LruCache.begin_fill`,
:meth:`LruCache.end_fill`). Nothing here waits on a lock: a hit is a dict lookup.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from twisted.logger import Logger

from toystore.logs import debug_enabled

V = TypeVar("V")

log = Logger()


@dataclass(frozen=True)
class CacheStats:
    size: int
    capacity: int
    hits: int
    misses: int
    invalidations: int


class LruCache(Generic[V]):
    """Least-recently-used cache of values by name; capacity 0 turns it off.

    :param capacity: how many names it keeps; 0 means every get misses and put stores nothing.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self.invalidations = 0
        self._entries: OrderedDict[str, V] = OrderedDict()
        # Generations and fill counts exist only for names with a fill in flight, so
        # these dicts stay as small as the number of concurrent misses.
        self._generations: dict[str, int] = {}
        self._fills: dict[str, int] = {}

    def get(self, name: str) -> V | None:
        """The cached value (now the most recently used), or None on a miss."""
        value = self._entries.get(name)
        if value is None:
            self.misses += 1
            if debug_enabled():
                log.debug("Cache miss for {name}", name=name)
            return None
        self._entries.move_to_end(name, last=False)
        self.hits += 1
        if debug_enabled():
            log.debug("Cache hit for {name}", name=name)
        return value

    def put(self, name: str, value: V) -> None:
        """Store ``value`` as the most recently used, evicting the least recently used past capacity."""
        if self.capacity == 0:
            return
        self._entries[name] = value
        self._entries.move_to_end(name, last=False)
        while len(self._entries) > self.capacity:
            evicted, _ = self._entries.popitem(last=True)
            log.debug("Cache evicted {name}", name=evicted)

    def invalidate(self, name: str) -> None:
        """Drop ``name`` and fence off any fill of it that is in flight."""
        self.invalidations += 1
        self._entries.pop(name, None)
        if name in self._fills:
            self._generations[name] = self._generations.get(name, 0) + 1

    def invalidate_all(self) -> None:
        """Drop every entry and fence off every fill in flight (a new catalog leader may hold
        changes that the old one never pushed)."""
        self.invalidations += 1
        self._entries.clear()
        for name in self._fills:
            self._generations[name] = self._generations.get(name, 0) + 1

    def begin_fill(self, name: str) -> int:
        """Note that a fetch of ``name`` starts; returns the generation to hand to :meth:`end_fill`."""
        self._fills[name] = self._fills.get(name, 0) + 1
        return self._generations.get(name, 0)

    def end_fill(self, name: str, generation: int, value: V | None) -> bool:
        """Finish a fetch begun with :meth:`begin_fill`; store ``value`` unless it was invalidated meanwhile.

        :param value: the fetched value, or None when the fetch failed.
        :return: whether the value was stored.
        """
        fresh = self._generations.get(name, 0) == generation
        remaining = self._fills[name] - 1
        if remaining:
            self._fills[name] = remaining
        else:
            del self._fills[name]
            self._generations.pop(name, None)
        if value is None:
            return False
        if not fresh:
            log.debug("Cache dropped a fill of {name} invalidated while in flight", name=name)
            return False
        self.put(name, value)
        return self.capacity > 0

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """Cached names, most recently used first."""
        return list(self._entries)

    def stats(self) -> CacheStats:
        return CacheStats(len(self._entries), self.capacity, self.hits, self.misses, self.invalidations)
