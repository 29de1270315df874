#!/bin/sh
# certbot deploy hook (installed by InTunnel's playbook): load the renewed certificate.
exec systemctl reload nginx
