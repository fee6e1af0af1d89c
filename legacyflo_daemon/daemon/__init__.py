"""The daemon: composition root (``app``), start-up recovery, scheduling and the admission pool.

Wiring only: it owns no rule of the copy, the report or the spool, and nothing but the CLI
imports it."""
