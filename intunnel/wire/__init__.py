"""The wire layer: bytes on sockets, no business rules.

- ``protocol``: the agent/relay messages and control-channel state (sans-I/O);
- ``http1``: HTTP/1.1 message framing, both directions (sans-I/O);
- ``netio``: the asyncio glue every socket goes through;
- ``zerocopy``: splice(2) pumps that move bulk bytes inside the kernel.
"""
