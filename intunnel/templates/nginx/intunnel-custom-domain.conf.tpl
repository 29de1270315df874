# {{header}}
# Custom domain {{hostname}} of tunnel {{subdomain}}.{{domain}} (intunnel-admin certs reconcile writes one
# file per name: a broken one never takes the others down, and nginx -t checks it before any reload).
%   include('_redirect.conf.tpl', server_name=hostname)
% if tls_cert:
server {
    listen {{https_port}} ssl;
%   if ipv6:
    listen [::]:{{https_port}} ssl;
%   end
    server_name {{hostname}};
% include('_tls.conf.tpl')

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
% end
