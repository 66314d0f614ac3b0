"""Configuration, read once and passed down.

settings.py: the settings dataclasses; options.py: each as a flag and a
MAILHOOK_* variable, and the conversion of a raw value; load.py: reading them
from flags, MAILHOOK_* environment variables and a TOML file; validate.py:
checking them; render.py: printing them; addresses.py: the listen-address helpers.
"""
