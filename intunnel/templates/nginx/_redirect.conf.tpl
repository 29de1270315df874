# Port {{http_port}}: only the ACME HTTP-01 challenge is answered; everything else moves to HTTPS.
server {
    listen {{http_port}};
% if ipv6:
    listen [::]:{{http_port}};
% end
    server_name {{server_name}};

    location /.well-known/acme-challenge/ {
        root {{acme_root}};
    }
    location / {
        return 301 https://$host{{https_port_suffix}}$request_uri;
    }
}

