from mailhook.cli import main

raise SystemExit(main())
