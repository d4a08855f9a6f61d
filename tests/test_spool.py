"""The API's write-ahead spool: what Kafka did not take is found by the drain."""

from pathlib import Path

from api.spool import Spool


def test_a_failed_event_in_the_open_segment_is_found_and_sent_after_sealing(tmp_path: Path):
    spool = Spool(tmp_path)
    ok = spool.append(b"p1", b"{}")
    spool.ack(ok)
    assert not spool.holds_failed and spool.undelivered() == []
    failed = spool.append(b"p2", b'{"x":1}')
    spool.fail(failed)
    # Kafka came back between the drain's seal and the next event: the open segment holds
    # an event Kafka never got, and only sealing hands it to the drain.
    assert spool.holds_failed and spool.undelivered() == []
    spool.seal()
    assert not spool.holds_failed
    [segment] = spool.undelivered()
    assert list(Spool.read(segment)) == [(b"p1", b"{}"), (b"p2", b'{"x":1}')]


def test_an_acknowledged_segment_is_deleted_once_sealed(tmp_path: Path):
    spool = Spool(tmp_path, segment_events=2)
    segs = [spool.append(f"p{i}".encode(), b"{}") for i in range(3)]
    for seg in segs:
        spool.ack(seg)
    spool.seal()
    assert list(tmp_path.glob("segment-*")) == []
