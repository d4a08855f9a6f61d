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


def test_the_spool_refuses_past_its_cap_writes_nothing_and_takes_again_once_drained(
        tmp_path: Path):
    import pytest

    from api.spool import SpoolFull

    spool = Spool(tmp_path, segment_events=10, max_bytes=400)
    segs = [spool.append(f"p{i}".encode(), b"x" * 30) for i in range(10)]
    assert spool.bytes == 10 * 34
    with pytest.raises(SpoolFull, match="its cap is 400"):
        spool.append(b"p10", b"x" * 100)
    assert spool.refusing is not None and "cap" in spool.refusing
    assert sum(p.stat().st_size for p in tmp_path.glob("segment-*")) == 340  # nothing added
    for seg in segs:
        spool.ack(seg)  # Kafka took them: the full segment is deleted, its bytes freed
    assert spool.bytes == 0 and list(tmp_path.glob("segment-*")) == []
    spool.append(b"p10", b"x" * 100)
    assert spool.refusing is None
    # a restarted process counts what earlier ones left
    spool.seal()
    assert Spool(tmp_path).bytes == 105


FULL_DISK = r"""
import json, resource, signal, sys
from pathlib import Path
from api.spool import Spool, SpoolFull

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails, not kills
spool = Spool(Path(sys.argv[1]), segment_events=1000)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))  # the disk, full at 1,000 bytes
written, refused = 0, None
for i in range(100):
    try:
        spool.append(f"pay_{i:03d}".encode(), b"v" * 37)
        written += 1
    except SpoolFull as exc:
        refused = str(exc)
        break
spool.seal()
print(json.dumps({"written": written, "refused": refused, "refusing": spool.refusing}))
"""


def test_a_full_disk_is_a_refusal_and_leaves_no_torn_line(tmp_path: Path):
    """The file system itself refusing (here a file size limit, as a full disk does): the
    append raises SpoolFull, the part of the line written is taken back, and every line
    the spool holds is whole."""
    import json
    import subprocess
    import sys

    from tests.test_packaging import ROOT

    out = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=60)
    state = json.loads(out.stdout)
    # lines of 46 bytes: 21 fit in 1,000, the 22nd got 34 bytes in, then the disk was full
    assert state["written"] == 21
    assert "disk" in state["refused"] and state["refusing"] == state["refused"]
    [segment] = list(tmp_path.glob("segment-*"))
    assert segment.stat().st_size == 21 * 46  # the 34 bytes taken back
    entries = list(Spool.read(segment))
    assert [k for k, _ in entries] == [f"pay_{i:03d}".encode() for i in range(21)]
    assert all(v == b"v" * 37 for _, v in entries)
