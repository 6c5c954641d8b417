"""The development kit: everything that helps build, test and measure the product but never runs
on a box. It is not on the card: the image's root filesystem ships an explicit allow-list of
runtime packages (appliance/image/rootfs.py, RUNTIME), and this package is not on it.

- `commands`: the dev commands of the `infraspectre` CLI (`demo`, `bench ...`); the product CLI
  imports it only if it is installed and otherwise answers those commands with one line;
- `capture/`: the mirror-port lab in network namespaces, bounded lab traffic, the seeded
  synthetic capture, the flow benches (offline and live);
- `bus/`: the ingest bench and the hostile-client mix; `wal/`: the write-amplification bench,
  the simulated disk and the delivery ledger of the WAL's crash and fault tests;
- `image/`, `qemu/`: the image and boot benches, the board tier's pytest plugin;
- `demo`, `pipeline_bench`, `localprocs` (our own CLI as local child processes), `codegen`
  (`make proto`: appliance/wire/_generated from proto/ with grpcio-tools).

The rule (tests/unit/test_layering.py): no runtime module imports appliance.devkit, pytest or
scapy; the devkit may import anything.
"""
