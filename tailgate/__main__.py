from tailgate.cli import main

raise SystemExit(main())
