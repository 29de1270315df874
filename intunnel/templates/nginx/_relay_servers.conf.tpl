    # One failed connection marks a relay down for {{relay_fail_timeout}}: meanwhile every request skips it
    # for the next relay on the ring (the same one for a tunnel's agent and its visitors), then one
    # request tries it again.  So a dead relay is skipped at once, a restarted one is back within {{relay_fail_timeout}}.
% for relay in relays:
    server {{relay}} max_fails={{relay_max_fails}} fail_timeout={{relay_fail_timeout}};
% end
