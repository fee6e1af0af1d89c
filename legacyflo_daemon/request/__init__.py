"""The request CSV, from bytes to ``Request`` values and row errors (``csvfile``, ``rows``,
``tokens``), and dates as text (``dates``). Pure: no I/O, no clock."""
