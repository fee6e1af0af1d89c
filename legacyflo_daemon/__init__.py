"""legacyflo-daemon: migrate whole organisations' mail from Exchange/IMAP into an IMAP archive.

The packages are layers; each imports only the ones below it (``lint-imports`` checks this)::

    cli                       the command line
    daemon                    composition root, recovery, scheduling, pool
    spool | report            the spool directory and intake | results, report mails, listings
    transfer                  the copier: folder passes, mapping, identity, budget, back-off
    outbox | state            outbox files and SMTP | the state store
    imap                      the IMAP boundary (session API, sans-I/O syntax, aioimaplib adapter)
    runtime                   logging, secrets, durable files, systemd, asyncio helpers
    config | request          the TOML configuration | the request CSV (pure)
    model | errors            shared values | the one exception hierarchy (pure)
"""

__version__ = "0.1.0"
