"""`python -m pipeline` is the `refusals` command."""

from pipeline.cli import main

raise SystemExit(main())
