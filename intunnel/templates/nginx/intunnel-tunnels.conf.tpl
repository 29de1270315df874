# {{header}}
# Every <subdomain>.{{domain}}: public traffic for the tunnels, carried by the relay.
map $http_upgrade $intunnel_tunnel_connection {
    default upgrade;
    ''      close;
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
        proxy_pass http://{{relay_upstream}};
% include('_forwarded.conf.tpl')
% include('_stream_proxy.conf.tpl', connection_map='intunnel_tunnel_connection')
    }
}
