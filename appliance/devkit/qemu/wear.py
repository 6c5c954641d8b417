"""Flash wear on the emulated board: `bench wal` run inside the guest, on its f2fs /data.

    python -m appliance.devkit.qemu.wear IMAGE [--board virt|raspi3b] [--rates 5,50]
        [--seconds 60] [--records 2000] [--run-timeout 3600]

Boots a copy of the card (a debug boot: a shell on the console), copies this development
kit's WAL bench module into the guest (the image does not ship the development kit) and runs
it there with `--on-dir /data/bench`: our WAL, SQLite committing per record and SQLite
committing on our WAL's triggers, each paced at every rate and at saturation, measured with
the data partition's own block-device counter (/sys/dev/block/MAJ:MIN/stat). Prints one JSON
object per rate (the bench's own output) and the boot's console log path.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from appliance.devkit.qemu.fixtures import sparse_copy
from appliance.devkit.wal import bench
from appliance.errors import CommandError
from appliance.qemu import boards
from appliance.qemu.machine import Machine


def measure(
    image: Path,
    board: str,
    rates: list[int],
    seconds: float,
    records: int,
    workdir: Path,
    run_timeout: float = 3600.0,
) -> list[dict[str, object]]:
    """Boot image on board and run the WAL bench in the guest once per rate (each run bounded
    by run_timeout)."""
    card = workdir / "card.img"
    sparse_copy(image, card)  # the 1 GiB card is mostly holes
    machine = Machine(boards.load(board), card, workdir / board, console_shell=True)
    results = []
    try:
        machine.boot(600)
        machine.put_file("/tmp/wal_bench.py", Path(bench.__file__).read_bytes(), timeout=300)
        for rate in rates:
            # the copied module beside the image's appliance package; no .pyc is written on /
            run = machine.run(
                'PYTHONDONTWRITEBYTECODE=1 python3 -c \'import sys; sys.path.insert(0, "/tmp"); '
                "import wal_bench, argparse; p = argparse.ArgumentParser(); "
                "s = p.add_subparsers(); wal_bench.register(s); a = p.parse_args(sys.argv[1:]); "
                "sys.exit(a.func(a))' wal --on-dir /data/bench --json "
                f"--records {records} --paced-rate {rate} --paced-seconds {seconds}",
                timeout=run_timeout,
            )
            if run.status != 0:
                raise CommandError(f"bench in the guest failed at {rate}/s: {run.output[-500:]}")
            results.append(json.loads(run.output.strip().splitlines()[-1]))
    finally:
        machine.power_cut()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.devkit.qemu.wear", description=__doc__)
    p.add_argument("image", type=Path)
    p.add_argument("--board", default="virt", choices=boards.names())
    p.add_argument("--rates", default="5,50", help="paced records per second, comma-separated")
    p.add_argument("--seconds", type=float, default=60.0, help="paced duration per rate")
    p.add_argument("--records", type=int, default=2000, help="saturation records")
    p.add_argument(
        "--run-timeout", type=float, default=3600.0,
        help="bound on each rate's run in the guest, seconds (on raspi3b, SQLite committing "
        "per record keeps ~5 records/s: 3,000 records at 50/s take ~10 min)",
    )  # fmt: skip
    args = p.parse_args(argv)
    try:
        rates = [int(r) for r in args.rates.split(",")]
        if not args.image.is_file():
            raise CommandError(f"no image {args.image}")
        if min(rates) <= 0 or args.seconds <= 0 or args.records <= 0 or args.run_timeout <= 0:
            raise CommandError("--rates, --seconds, --records and --run-timeout must be positive")
        with tempfile.TemporaryDirectory(prefix="infraspectre-wear-") as tmp:
            for rate, result in zip(
                rates, measure(args.image, args.board, rates, args.seconds, args.records,
                               Path(tmp), args.run_timeout), strict=True,
            ):  # fmt: skip
                print(json.dumps({"board": args.board, "rate_per_s": rate, **result}))
    except (CommandError, ValueError) as exc:
        print(f"wear: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
