"""`mailhook serve --workers N`: N worker processes serve SMTP and HTTP around the parent's one writer."""
