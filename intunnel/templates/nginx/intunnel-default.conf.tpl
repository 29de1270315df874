# {{header}}
# Catch-all: a request for a name that is not ours gets no answer at all.
server {
    listen {{http_port}} default_server;
% if ipv6:
    listen [::]:{{http_port}} default_server;
% end
    server_name _;
    return 444;
}
% if tls:

server {
    listen {{https_port}} ssl default_server;
%   if ipv6:
    listen [::]:{{https_port}} ssl default_server;
%   end
    server_name _;
    ssl_reject_handshake on;
}
% end
