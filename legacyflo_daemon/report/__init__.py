"""What a finished request leaves behind: the result JSON, the report mail and its listing,
written by ``finisher`` in a crash-safe order. Must not import the copier."""
