"""Custom domains: a tunnel's own hostnames (``app.customer.com``), with certificates by ACME HTTP-01.

The web app only records the wish (``intunnel.domains``: a ``custom_domain`` row in state
``pending-dns``).  A separate, small reconciler (``intunnel-admin certs reconcile``, run by its
own hardened systemd timer) does the rest, one module per job:

- ``names``:     which hostnames are acceptable (pure: IDNA, LDH labels, not under <domain>);
- ``plan``:      what to do with one hostname now, and its next status (pure: backoff, renewal);
- ``dnscheck``:  does a hostname resolve to this server (glue: the system's or a chosen resolver);
- ``acme``:      obtain, renew and delete a certificate (glue: certbot with the webroot plugin);
- ``reconcile``: the loop: rows in, certificates, one nginx vhost file per hostname
                 (``intunnel.nginxvhost``), ``nginx -t`` before each reload, rollback on failure.

The relay routes a custom hostname to its tunnel only while its row is ``active``.
"""
