"""`python -m moe_jax.cli ...` is `moe-jax ...`."""

import sys

from moe_jax.cli import main

sys.exit(main())
