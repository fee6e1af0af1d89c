"""The request CSV, from bytes to ``Request`` values and row errors. Pure: no I/O, no clock."""
