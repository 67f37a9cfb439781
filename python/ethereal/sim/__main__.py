"""``python -m ethereal.sim --host H --port P [...]``."""

from ethereal.sim import main

raise SystemExit(main())
