"""The shadow loop's only meeting point: a Redis server (streams, a consumer group, one hash per drafter version).

Keys, under ``prefix`` (default ``clsd``):
    <p>:trajectories   stream of trajectories (field ``data``: JSON), at most ``max_len`` entries: adding to a full
                       stream trims the oldest (counted as ``dropped_full`` in <p>:stats, with ``added``)
    group ``trainers`` on it: a restarted trainer first pages through its own pending entries (read before a crash),
                       then reads new ones; an entry is acknowledged only once the update that used it is checkpointed
    <p>:stats          hash of counters: added, dropped_full, dropped_trimmed (pending entries trimmed before use),
                       rejected:<reason> (trajectories the trainer refused), versions
    <p>:drafter        hash of the latest drafter version: version, path, sha256, time; written last, after the
                       export directory is complete, so a reader never sees a half-written version
    <p>:versions       stream of every announcement (version, time): the primary's version lag is measured on it

Connection loss (a Redis restart) raises ``redis.ConnectionError`` from the call in progress; the callers retry
with ``retry`` (exponential backoff, forever unless given a deadline), so both roles reconnect and continue. With
persistence on (the launch scripts and tests start Redis with ``appendonly yes``, ``appendfsync always``) nothing
added or acknowledged before a restart is lost.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable, TypeVar

import redis

T = TypeVar("T")
GROUP = "trainers"

_ADD = """
local before = redis.call('XLEN', KEYS[1])
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'data', ARGV[2])
local dropped = before + 1 - redis.call('XLEN', KEYS[1])
redis.call('HINCRBY', KEYS[2], 'added', 1)
if dropped > 0 then redis.call('HINCRBY', KEYS[2], 'dropped_full', dropped) end
return {id, dropped}
"""


def retry(call: Callable[[], T], what: str, log: Callable[[str], None] = print, deadline: float | None = None,
          first: float = 0.2, most: float = 5.0) -> T:
    """``call()`` until it does not raise a Redis connection error, waiting first, 2·first, ... up to ``most``
    seconds between tries; each failure is logged once per wait. After ``deadline`` (time.monotonic) it raises."""
    wait = first
    while True:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            if deadline is not None and time.monotonic() > deadline:
                raise
            log(f"redis unavailable during {what} ({type(exc).__name__}: {exc}); retrying in {wait:.1f} s")
            time.sleep(wait)
            wait = min(most, 2 * wait)


def digest(directory: str | Path) -> str:
    """sha256 over the export directory's files (names and bytes, sorted by name)."""
    h = hashlib.sha256()
    for f in sorted(Path(directory).iterdir()):
        if f.is_file():
            h.update(f.name.encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


class Transport:
    def __init__(self, url: str, prefix: str = "clsd", max_len: int = 10_000):
        self.client = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
        self.stream, self.stats_key = f"{prefix}:trajectories", f"{prefix}:stats"
        self.drafter_key, self.versions = f"{prefix}:drafter", f"{prefix}:versions"
        self.max_len = max_len
        self._add = self.client.register_script(_ADD)

    # -- the primary ---------------------------------------------------------------------------------------
    def send(self, trajectory: dict) -> tuple[str, int]:
        """Add one trajectory: (its stream id, how many old entries the bound trimmed)."""
        entry, dropped = self._add(keys=[self.stream, self.stats_key],
                                   args=[self.max_len, json.dumps(trajectory, separators=(",", ":"))])
        return entry.decode(), int(dropped)

    def latest(self) -> dict | None:
        """The latest announced drafter version {version, path, sha256, time}, or None."""
        raw = self.client.hgetall(self.drafter_key)
        if not raw:
            return None
        out = {k.decode(): v.decode() for k, v in raw.items()}
        return {**out, "version": int(out["version"]), "time": float(out["time"])}

    # -- the trainer ---------------------------------------------------------------------------------------
    def join(self) -> None:
        """Create the consumer group (reading from the stream's start) unless it exists."""
        try:
            self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def receive(self, consumer: str, count: int, block_ms: int = 1000,
                pending_after: str | None = None) -> tuple[list[tuple[str, dict | None]], str | None]:
        """(entries, the last id read) for ``consumer``: up to ``count`` new entries, waiting up to ``block_ms``;
        with ``pending_after``, instead its own pending entries after that id (read before a crash and never
        acknowledged: a restarted trainer pages through them first, from "0"). An entry trimmed while pending is
        counted and skipped; one whose data is not JSON is (id, None), for the caller to reject."""
        start = ">" if pending_after is None else pending_after
        reply = self.client.xreadgroup(GROUP, consumer, {self.stream: start}, count=count,
                                       block=block_ms if pending_after is None else None)
        out, last = [], None
        for _, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id = entry_id.decode()
                if not fields:  # pending, but trimmed from the stream before it was used
                    self.client.hincrby(self.stats_key, "dropped_trimmed", 1)
                    self.client.xack(self.stream, GROUP, entry_id)
                    continue
                try:
                    out.append((entry_id, json.loads(fields[b"data"])))
                except (KeyError, ValueError):
                    out.append((entry_id, None))
        return out, last

    def ack(self, ids: list[str]) -> None:
        if ids:
            self.client.xack(self.stream, GROUP, *ids)

    def reject(self, entry_id: str, reason: str) -> None:
        """Count and acknowledge a trajectory the trainer refuses (it is never read again)."""
        self.client.hincrby(self.stats_key, f"rejected:{reason}", 1)
        self.client.xack(self.stream, GROUP, entry_id)

    def publish(self, version: int, directory: str | Path) -> dict:
        """Announce a complete export directory as ``version`` (its checksum first, the announcement last)."""
        record = {"version": version, "path": str(Path(directory).resolve()), "sha256": digest(directory),
                  "time": time.time()}
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.drafter_key, mapping=record)
        pipe.xadd(self.versions, {"version": version, "time": record["time"]}, maxlen=1000)
        pipe.hincrby(self.stats_key, "versions", 1)
        pipe.execute()
        return record

    # -- both ----------------------------------------------------------------------------------------------
    def stats(self) -> dict:
        """The counters, the stream's length and the group's pending count."""
        out = {k.decode(): int(v) for k, v in self.client.hgetall(self.stats_key).items()}
        out["length"] = self.client.xlen(self.stream)
        try:
            groups = self.client.xinfo_groups(self.stream)
        except redis.ResponseError:
            groups = []
        out["pending"] = sum(g["pending"] for g in groups if g["name"].decode() == GROUP)
        return out
