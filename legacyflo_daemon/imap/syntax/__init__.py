"""IMAP syntax without I/O: command arguments out, typed responses in, what a reply means.

``wire`` (arguments, generic response values), ``parse`` (typed results), ``responses`` (what a
tagged reply means), ``uidset`` (UID sets), ``utf7`` (mailbox names). Pure functions over bytes
and values; tested without any server."""
