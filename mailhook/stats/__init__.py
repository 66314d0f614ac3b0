"""`mailhook stats`: the window, the queries, the report they fill, its rendering and the command, apart."""
