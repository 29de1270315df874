"""`intunnel-admin`, the operator's command.

    cli.py        parses arguments, runs a command, turns every error into one line
    common.py     Context (settings, database, output, prompts), lookups, file ownership
    table.py      aligned tables for people (pure)
    users.py      user create | list | show | set-password | disable | enable | delete | promote | demote
    tunnels.py    tunnel list | show | delete | disconnect
    tokens.py     token list | revoke
    db.py         db migrate | check             dbcopy.py     db copy (SQLite -> empty PostgreSQL)
    backup.py     backup, backup list            retention.py  names and retention rule (pure)
    restore.py    restore                        dbfiles.py    online copy, verify, atomic gzip, lock
                                                 pgtools.py    pg_dump, pg_restore, psql: versions, password
    doctor.py     doctor                         probe.py      health endpoints, systemd units
    nginx.py      nginx render

Business rules live in ``intunnel.accounts`` and ``intunnel.tunnels``, shared
with the web app; these modules only parse, call them and print.
"""
