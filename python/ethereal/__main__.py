from ethereal.cli import main

raise SystemExit(main())
