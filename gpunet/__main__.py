"""`python -m gpunet ...` = the `gpunet` command (used where the console script may not be on PATH)."""
import sys

from gpunet.cli.main import main

sys.exit(main())
