"""SIGKILL a process appending and acking at full speed, 200 times; check every promise.

The child (a fork of the test process) reports through a pipe, one atomic line each:
`A n` before appending keys up to n, `F n` after flush() returned, `K key...` before acking
those keys, `C` after an ack call completed a cursor write. The parent kills it at a random
moment, reopens the WAL and checks with the DeliveryLedger that every record flushed before the
kill is present exactly once, nothing appears that was never appended or with other bytes, and
nothing acked before the last cursor write comes back.
"""

from __future__ import annotations

import os
import random
import select
import signal
import time
import traceback
from pathlib import Path

from appliance.devkit.wal.ledger import DeliveryLedger, payload_for
from appliance.wal import Wal, WalConfig

# Each life is bounded (killed at most 80 ms after the fork, at most 8 MiB of WAL to recover),
# so the loop is bounded in time as well as in count; about 12 s on a 2-core machine.
KILLS = 200


def crash_config(path: Path) -> WalConfig:
    return WalConfig(
        path=path,
        segment_bytes=256 * 1024,
        max_wal_bytes=8192 + 32 * 256 * 1024,
        flush_interval_ms=20,  # background flushes too, at unknown moments
        flush_bytes=64 * 1024,
        cursor_every_acks=64,
        cursor_interval_ms=3_600_000,  # cursor writes only inside ack(): the child sees them
    )


def child(path: Path, life: int, wfd: int, seed: int) -> None:
    rng = random.Random(seed)

    def say(line: str) -> None:
        os.write(wfd, (line + "\n").encode())

    try:
        wal = Wal.open(crash_config(path))
        n = 0
        while True:
            count = rng.randint(1, 60)
            say(f"A {n + count}")
            for i in range(n, n + count):
                key = f"{life}:{i}".encode()
                wal.append(key, payload_for(key))
            n += count
            if rng.random() < 0.3:
                wal.flush()
                say(f"F {n}")
            recs = wal.read(rng.randint(1, 90))
            chosen = [r for r in recs if rng.random() < 0.93]
            if chosen:
                say("K " + " ".join(r.key.decode() for r in chosen))
                before = wal.cursor_writes
                wal.ack(r.seq for r in chosen)
                if wal.cursor_writes > before:
                    say("C")
    except BaseException:
        say("E " + traceback.format_exc().replace("\n", " | "))
        os._exit(1)


def run_life(path: Path, life: int, rng: random.Random, ledger: DeliveryLedger) -> None:
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(rfd)
        child(path, life, wfd, rng.randrange(1 << 30))
        os._exit(0)
    os.close(wfd)
    deadline = time.monotonic() + rng.uniform(0.002, 0.08)
    data = bytearray()
    killed = False
    while True:
        timeout = max(0.0, deadline - time.monotonic()) if not killed else None
        ready, _, _ = select.select([rfd], [], [], timeout)
        if not ready and not killed:
            os.kill(pid, signal.SIGKILL)
            killed = True
            continue
        chunk = os.read(rfd, 65536)
        if not chunk:
            break
        data += chunk
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    lines = data.decode().split("\n")[:-1]  # a line cut by the kill has no newline
    errors = [line for line in lines if line.startswith("E ")]
    assert not errors, errors[0]
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    appended = 0
    for line in lines:
        tag, _, rest = line.partition(" ")
        if tag == "A":
            upto = int(rest)
            ledger.appended(f"{life}:{i}".encode() for i in range(appended, upto))
            appended = upto
        elif tag == "F":
            ledger.flushed()
        elif tag == "K":
            ledger.acked(k.encode() for k in rest.split())
        elif tag == "C":
            ledger.cursor_written()


def test_two_hundred_sigkills_keep_every_delivery_promise(tmp_path: Path) -> None:
    rng = random.Random(1127)
    path = tmp_path / "wal"
    ledger = DeliveryLedger()
    corrupt = 0
    for life in range(KILLS):
        run_life(path, life, rng, ledger)
        wal = Wal.open(crash_config(path), background=False)
        got = [(r.key, r.payload) for r in wal.read(10_000_000)]
        assert wal.recovery is not None
        corrupt += wal.recovery.corrupt_records
        assert wal.stats().dropped_records == 0
        wal.close()
        problems = ledger.check(got)
        assert not problems, (life, problems[:5])
    assert ledger.lives == KILLS
    assert len(ledger.ever_appended) > KILLS * 5  # the children really worked
    assert len(ledger.acked_persisted) > KILLS  # and their cursor writes were checked
    # a SIGKILL loses no page cache: no record written by pwrite may look corrupt
    assert corrupt == 0
