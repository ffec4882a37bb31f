"""The shadow loop's Redis transport against a real redis-server (persistence on): bounded streams with counted
drops, redelivery of what a crashed trainer had read, rejection, restarts of Redis, version announcements."""

import signal
import threading
import time

import pytest

from clsd_ds.shadow import redis_server
from clsd_ds.shadow.redis_server import RedisServer
from clsd_ds.shadow.transport import Transport, digest, retry

WHY = redis_server.available()
pytestmark = pytest.mark.skipif(WHY is not None, reason=str(WHY))


@pytest.fixture
def server(tmp_path):
    s = RedisServer(tmp_path / "redis").start()
    yield s
    s.stop(signal.SIGKILL)


def test_send_receive_ack_and_a_bounded_stream_counts_what_it_drops(server):
    t = Transport(server.url, max_len=5)
    t.join()
    ids = [t.send({"task": i})[0] for i in range(3)]
    got, last = t.receive("trainer-0", count=10)
    assert [i for i, _ in got] == ids and [d["task"] for _, d in got] == [0, 1, 2] and last == ids[-1]
    assert t.stats()["pending"] == 3 and t.receive("trainer-0", count=10, block_ms=10) == ([], None)  # read once
    t.ack(ids)
    assert t.stats()["pending"] == 0 and t.receive("trainer-0", count=10, pending_after="0") == ([], None)
    dropped = [t.send({"task": i})[1] for i in range(3, 11)]  # 8 more: 3 + 8 = 11 added, at most 5 kept
    assert sum(dropped) == 6 and t.stats() == {"added": 11, "dropped_full": 6, "length": 5, "pending": 0}


def test_a_crashed_trainer_gets_what_it_had_read_first_and_trimmed_pending_entries_are_counted(server):
    t = Transport(server.url, max_len=4)
    t.join()
    ids = [t.send({"task": i})[0] for i in range(4)]
    assert [i for i, _ in t.receive("trainer-0", count=2)[0]] == ids[:2]  # read, then "killed" before the ack
    again = Transport(server.url, max_len=4)  # the restarted trainer, same consumer name
    first, last = again.receive("trainer-0", count=1, pending_after="0")  # its pending entries, page by page
    second, last = again.receive("trainer-0", count=1, pending_after=last)
    assert [i for i, _ in first + second] == ids[:2] and again.receive("trainer-0", 1, pending_after=last)[0] == []
    again.ack(ids[:2])
    assert [i for i, _ in again.receive("trainer-0", count=10)[0]] == ids[2:]  # then the new ones
    for i in range(4):  # the pending ids[2:] are trimmed away by newer entries before they are used
        t.send({"task": 10 + i})
    assert again.receive("trainer-0", count=10, pending_after="0")[0] == []  # nothing for the trimmed two
    assert t.stats()["dropped_trimmed"] == 2
    assert [d["task"] for _, d in again.receive("trainer-0", count=10)[0]] == [10, 11, 12, 13]


def test_unreadable_entries_are_rejected_and_counted(server):
    t = Transport(server.url)
    t.join()
    bad = t.client.xadd(t.stream, {"data": b"{not json"}).decode()
    [(entry, data)], _ = t.receive("trainer-0", count=10)
    assert (entry, data) == (bad, None)
    t.reject(entry, "not_json")
    assert t.stats()["rejected:not_json"] == 1 and t.stats()["pending"] == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_redis_restart_keeps_what_was_added_and_acknowledged_and_callers_reconnect(server, sig):
    t = Transport(server.url)
    t.join()
    ids = [t.send({"task": i})[0] for i in range(4)]
    t.receive("trainer-0", count=3)  # ids[2] stays pending across the restart
    t.ack(ids[:2])
    done = {}

    def primary():  # sends during the outage, retrying until Redis is back
        done["id"] = retry(lambda: t.send({"task": 4}), "send", log=lambda m: done.setdefault("logged", m))[0]

    server.stop(sig)
    sender = threading.Thread(target=primary)
    sender.start()
    time.sleep(1.0)
    assert "id" not in done and "redis unavailable during send" in done.get("logged", "")
    server.start()
    sender.join(timeout=30)
    got, _ = retry(lambda: t.receive("trainer-0", count=10, pending_after="0"), "receive")
    assert [i for i, _ in got] == ids[2:3]  # the pending one survived; the acknowledged two are gone
    t.ack(ids[2:3])
    assert [i for i, _ in t.receive("trainer-0", count=10, block_ms=10)[0]] == [ids[3], done["id"]]
    assert t.stats()["added"] == 5


def test_a_version_is_announced_after_its_directory_is_complete_with_its_checksum(server, tmp_path):
    t = Transport(server.url)
    assert t.latest() is None
    export = tmp_path / "v3"
    export.mkdir()
    (export / "model.safetensors").write_bytes(b"weights")
    (export / "dit_config.json").write_text("{}")
    record = t.publish(3, export)
    latest = t.latest()
    assert latest["version"] == 3 and latest["sha256"] == digest(export) == record["sha256"]
    assert t.stats()["versions"] == 1 and t.client.xlen(t.versions) == 1
    (export / "model.safetensors").write_bytes(b"changed")
    assert digest(export) != latest["sha256"]  # what a reader checks before it switches
    with pytest.raises(Exception):
        retry(lambda: Transport("redis://127.0.0.1:1/0").latest(), "latest", log=lambda m: None,
              deadline=time.monotonic() + 0.5)
