    # One failed connection marks a relay down: every request skips it for the next relay on the
    # ring (the same one for a tunnel's agent and its visitors) until, {{relay_fail_timeout}} later, one request
    # tries it again (each try at a host cut off costs that request a connect timeout).
% for relay in relays:
    server {{relay}} max_fails={{relay_max_fails}} fail_timeout={{relay_fail_timeout}};
% end
