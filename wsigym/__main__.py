from wsigym.cli import main

raise SystemExit(main())
