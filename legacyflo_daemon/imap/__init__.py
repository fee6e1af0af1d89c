"""The IMAP boundary. ``session`` is the API the rest of the daemon uses; ``syntax`` is its pure,
sans-I/O core (wire format, response parsing, UID sets, modified UTF-7, response classification);
``_aioimaplib`` is the private adapter, the only code that imports aioimaplib. Every foreign
failure leaves this package as one of ``errors``."""
