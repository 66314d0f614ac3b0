"""Run a worker process of `serve --workers N` (`python -m mailhook.group PARENT CHANNEL SMTP HTTP`)."""

import sys

# As mailhook's own command does (cli.console): sqlite-utils would import pandas and numpy, ~50 MB
# per worker, for helpers mailhook never calls.
for name in ("pandas", "numpy"):
    sys.modules.setdefault(name, None)  # type: ignore[arg-type]

from mailhook.group.worker import main  # noqa: E402 - after the guard above

sys.exit(main(sys.argv[1:]))
