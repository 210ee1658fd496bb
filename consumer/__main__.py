"""`python -m consumer`: the same command as `inkeep-consumer`."""

from consumer.cli import main

raise SystemExit(main())
