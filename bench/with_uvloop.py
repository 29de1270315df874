"""Run an ``intunnel`` command on uvloop instead of asyncio's default loop (bench experiment).

    python -m bench.with_uvloop relay --config FILE
"""

import sys

import uvloop

from intunnel.cli import main

if __name__ == "__main__":
    uvloop.install()  # asyncio.run() in the services then creates a uvloop loop
    sys.exit(main(sys.argv[1:]))
