"""Configuration, read once and passed down.

settings.py: the settings dataclasses; load.py: reading them from flags,
MAILHOOK_* environment variables and a TOML file (and validating them);
render.py: printing them; addresses.py: the listen-address helpers.
"""
