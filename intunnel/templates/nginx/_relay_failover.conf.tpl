        # Several relays: one that refuses, resets or does not accept within {{relay_connect_timeout}} is skipped
        # for the next (relays sit on a private network, where connecting takes milliseconds and a
        # lost SYN is resent after 1 s).  Not non_idempotent: a request a relay may have acted on is
        # never sent twice.
        proxy_connect_timeout {{relay_connect_timeout}};
        proxy_next_upstream error timeout;
