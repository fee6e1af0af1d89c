"""The spool directory (``directory``: the only module that knows its paths) and the intake of a
claimed CSV into queued requests (``intake``)."""
