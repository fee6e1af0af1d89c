"""The outbox: its files (``store``), SMTP delivery of one mail (``smtp``), the sender task
(``sender``)."""
