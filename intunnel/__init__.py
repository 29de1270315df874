"""InTunnel: a self-hosted "expose localhost" appliance.

Rooms of the house (one package each):
  settings / errors      one place for configuration, one for errors
  models / migrations    the data, on SQLite through peewee
  security / validation  hashing, tokens, input rules (pure)
  tunnels                business rules for tunnels (shared by API and pages)
  web/                   Bottle app: REST API, login, dashboard
  wire/                  bytes on sockets: agent protocol, HTTP/1.1 framing (pure), asyncio glue, splice
  relay/                 asyncio relay: public endpoint and agent endpoint
  client/                the `intunnel http` agent
  admin/                 `intunnel-admin`: users, backups, doctor, nginx render
"""

__version__ = "0.1.0"
