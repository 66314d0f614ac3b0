"""The HTTP door (aiohttp, on the same event loop as SMTP) and its listener with aiohttp's private overrides."""
