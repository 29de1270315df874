% if tls:
    listen {{https_port}} ssl;
%   if ipv6:
    listen [::]:{{https_port}} ssl;
%   end
% else:
    listen {{http_port}};
%   if ipv6:
    listen [::]:{{http_port}};
%   end
% end
