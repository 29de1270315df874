# {{header}}
# The main domain: the web app (dashboard, REST API) and the agents' endpoint of the relay.
map $http_upgrade $intunnel_web_connection {
    default upgrade;
    ''      close;
}

% if tls:
%   include('_redirect.conf.tpl', server_name=domain)
% end
server {
% include('_listen.conf.tpl')
    server_name {{domain}};
% if tls:
% include('_tls.conf.tpl')
    add_header Strict-Transport-Security "max-age=63072000" always;
% end

    # Agents (the `intunnel http` client) connect here; the relay needs the Host header to see the main domain.
    location /_intunnel/ {
        proxy_pass http://{{relay_upstream}};
% include('_forwarded.conf.tpl')
% include('_stream_proxy.conf.tpl', connection_map='intunnel_web_connection')
    }

    location / {
        client_max_body_size {{web_max_body}};
        proxy_pass http://{{web_upstream}};
% include('_forwarded.conf.tpl')
    }
}
