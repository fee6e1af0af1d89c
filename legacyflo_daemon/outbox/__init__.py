"""The outbox: result and report-mail files (``store``), SMTP delivery and the sender task."""
