"""Process plumbing shared by every layer: logging and secret scrubbing, durable files,
systemd notification, small asyncio helpers."""
