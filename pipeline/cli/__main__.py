"""`python -m pipeline.cli`: the same as the `linesight` command."""

from pipeline.cli.main import main

raise SystemExit(main())
