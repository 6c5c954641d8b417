"""Development kit: the boot bench and the board tier's pytest plugin (fixtures)."""
