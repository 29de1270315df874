        # Tunnel traffic is a stream: never buffer it, let WebSockets upgrade, wait long for data.
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection ${{connection_map}};
        proxy_buffering off;
        proxy_request_buffering off;
        proxy_read_timeout {{stream_timeout}};
        proxy_send_timeout {{stream_timeout}};
