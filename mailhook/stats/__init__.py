"""`mailhook stats`: the queries (queries.py) apart from their rendering (render.py) and the command (command.py)."""
