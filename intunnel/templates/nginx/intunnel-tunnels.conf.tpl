# {{header}}
# Every <subdomain>.{{domain}}: public traffic for the tunnels, carried by the relay.
# Connections to the relay are kept alive and carry any tunnel's requests: the relay
# (relay_trust_proxy = true) follows each response and moves between tunnels.
upstream intunnel_relay {
    server {{relay_upstream}};
    keepalive 32;
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
    }
}
