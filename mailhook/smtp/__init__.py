"""The SMTP door: the aiosmtpd session subclass, its handler, AUTH, and the per-address limits."""
