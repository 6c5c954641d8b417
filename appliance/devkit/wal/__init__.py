"""Development kit: the WAL bench, the simulated disk and the delivery ledger."""
