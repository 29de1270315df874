    ssl_certificate {{tls_cert}};
    ssl_certificate_key {{tls_key}};
    # Mozilla "intermediate" profile (TLS 1.2 + 1.3, ECDHE AEAD suites only, so no dhparam file is needed).
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ecdh_curve X25519:prime256v1:secp384r1;
    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;
    ssl_prefer_server_ciphers off;
    ssl_session_timeout 1d;
    ssl_session_cache shared:intunnel_tls:10m;
    ssl_session_tickets off;
