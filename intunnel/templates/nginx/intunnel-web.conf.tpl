# {{header}}
# The main domain: the web app (dashboard, REST API) and the agents' endpoint of the relay.
map $http_upgrade $intunnel_web_connection {
    default upgrade;
    ''      close;
}
% if relays:
# Several relays: an agent goes to the relay its tunnel's visitors are sent to (intunnel-tunnels.conf
# hashes their Host, <subdomain>.{{domain}}): its client names the subdomain in {{placement_header}}
# on the control and every data connection of a session.  Anything but one DNS label (a client not
# yet welcomed sends none) hashes as {{domain}}: one fixed relay, never round robin (nginx's choice
# for an empty key), since a session's data connections must reach the relay of its control
# channel.  Forwarding between relays serves such an agent's visitors until it next connects.
map {{placement_variable}} $intunnel_relay_key {
    "~^[a-z0-9-]{1,63}$" {{placement_variable}}.{{domain}};
    default              {{domain}};
}
upstream intunnel_relay_agents {
    hash $intunnel_relay_key consistent;
%   include('_relay_servers.conf.tpl')
}
% end

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
% if relays:
        proxy_pass http://intunnel_relay_agents;
% else:
        proxy_pass http://{{relay_upstream}};
% end
% include('_forwarded.conf.tpl')
% include('_stream_proxy.conf.tpl', connection_map='intunnel_web_connection')
% if relays:
% include('_relay_failover.conf.tpl')
% end
    }

    location / {
        client_max_body_size {{web_max_body}};
        proxy_pass http://{{web_upstream}};
% include('_forwarded.conf.tpl')
    }
}
