# {{header}}
# Every <subdomain>.{{domain}}: public traffic for the tunnels, carried by the relay.
# Connections to the relay are kept alive and carry any tunnel's requests: the relay
# (relay_trust_proxy = true) follows each response and moves between tunnels.
upstream intunnel_relay {
% if relays:
    # Several relays: a tunnel's visitors go to the relay its name ($host, <subdomain>.{{domain}})
    # hashes to, where intunnel-web.conf sends its agent by the same hash of the same name.
    # The hash is consistent (ketama): a relay leaving or joining moves only its share of tunnels.
    hash $host consistent;
%   include('_relay_servers.conf.tpl')
    # No pool of idle connections to the relays here: nginx marks a relay down only when a
    # connection to it fails or times out, so after its host is cut off (no RST, just silence)
    # a pooled connection would take a visitor's request and wait up to proxy_read_timeout
    # (an hour, for streams).  A new connection per request fails over in one connect timeout.
% else:
    server {{relay_upstream}};
    keepalive 32;
% end
}
map $http_upgrade $intunnel_tunnel_connection {
    default upgrade;
    ''      '';
}

% if tls:
%   include('_redirect.conf.tpl', server_name='*.' + domain)
% end
server {
% include('_listen.conf.tpl')
    server_name *.{{domain}};
% if tls:
% include('_tls.conf.tpl')
% end

    location / {
        client_max_body_size {{tunnel_max_body}};
        proxy_pass http://intunnel_relay;
% include('_forwarded.conf.tpl')
% include('_stream_proxy.conf.tpl', connection_map='intunnel_tunnel_connection')
% if relays:
% include('_relay_failover.conf.tpl')
% end
    }
}
% if domain_dir:

# Custom domains of the tunnels (one file per hostname, written by intunnel-admin certs reconcile).
include {{domain_dir}}/*.conf;
% end
