"""legacyflo-daemon: migrate whole organisations' mail from Exchange/IMAP into an IMAP archive."""

__version__ = "0.1.0"
