"""`python -m intunnel.admin`: the same as `intunnel-admin`."""

import sys

from .cli import main

sys.exit(main())
