"""Development kit: the bus ingest bench and the hostile-client mix."""
