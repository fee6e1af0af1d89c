"""IMAP syntax without I/O: command arguments out, typed responses in, what a reply means.

Pure functions over bytes and values; tested without any server."""
