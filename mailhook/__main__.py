from mailhook.cli import console

raise SystemExit(console())
