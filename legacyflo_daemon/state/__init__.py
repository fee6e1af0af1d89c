"""The state store (embedded SQLite): claimed CSVs, requests, checkpoints, failures, progress."""
