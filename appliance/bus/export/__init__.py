"""Exporters at the bus: what the bus has verified and stored, sent on to the collectors
network teams already run.

    ipfix.py     the IPFIX codec (RFC 7011, RFC 5103 biflows): templates, records, messages
    source.py    the store, tailed by record id (only committed, verified flows)
    exporter.py  one thread per collector: transport (UDP, TCP), position, delivery semantics
    config.py    the `eventbus.export.ipfix` section
    metrics.py   bus_export_* (on the bus's registry)
    cli.py       `infraspectre bus export ipfix`: replay a time range from the store
"""
