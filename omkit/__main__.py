from omkit.cli import main

raise SystemExit(main())
