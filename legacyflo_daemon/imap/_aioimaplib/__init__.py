"""The private adapter around aioimaplib 2.0.3: the only modules that import it.

Each override fixes a measured defect of the library (see ``protocol``); nothing outside
``legacyflo_daemon.imap`` may import this package."""
