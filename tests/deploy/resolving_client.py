"""Run the `intunnel` command with extra name -> address mappings, like curl's --resolve.

The deploy test's domain (intunnel.test) exists in no DNS; this hook answers it
with the container's address, and everything else resolves as usual:

    INTUNNEL_TEST_HOSTS=intunnel.test=127.0.0.1 python resolving_client.py http 3000 --server ...
"""

import os
import socket
import sys

_real_getaddrinfo = socket.getaddrinfo
_HOSTS = dict(pair.split("=", 1) for pair in os.environ.get("INTUNNEL_TEST_HOSTS", "").split(",") if "=" in pair)


def _getaddrinfo(host, *args, **kwargs):
    return _real_getaddrinfo(_HOSTS.get(host, host), *args, **kwargs)


socket.getaddrinfo = _getaddrinfo
# uvloop resolves names inside libuv, past this hook: make the client use asyncio's own loop.
sys.modules["uvloop"] = None

if __name__ == "__main__":
    from intunnel.cli import main
    sys.exit(main(sys.argv[1:]))
