"""Several relays: keeping each agent on the relay where nginx sends its tunnel's visitors.

nginx places an agent and its visitors on one relay by hashing the tunnel's name (the agent
names it in ``X-InTunnel-Tunnel``, relay/../nginxconf.py).  Two things can leave an agent
elsewhere, with its visitors forwarded to it (relay/peers.py), one hop each:

  * its session named no tunnel (a client process's first, before any Welcome): ``bounce``
    says to welcome it, so it learns its subdomain, and have it reconnect at once naming it;
  * it connected while the relay its visitors reach was down, or the ring changed: when a
    session's visitors keep arriving through another relay for ``MOVE_AFTER``, ``rebalance``
    asks the agent to ``Move``.  The client opens a new session through nginx while the old
    one serves, and closes the old one once the new one is welcomed (make before break);
    this relay lets the old session's visitors in flight finish.

Neither runs with one relay (no peer listener).  Both are rate-limited per tunnel, so a client
that never names its tunnel, or that nginx keeps placing here, is served where it is.
"""

from __future__ import annotations

import logging

from ..wire import protocol as p

log = logging.getLogger("intunnel.relay")

PLACEMENT_RETRY = 60.0  # seconds before an agent is asked again to name its tunnel; the longest wait between moves
MOVE_AFTER = 3.0        # seconds of visitors arriving through another relay before an agent is asked to move
MOVE_RETRY = 5.0        # seconds before a tunnel's agent is asked to move again, doubling up to PLACEMENT_RETRY:
                        # nginx may still count the relay its visitors reach as down, and place it here again


class Recently:
    """Names seen within the last ``window`` seconds (bounded by the names seen in it)."""

    def __init__(self, window: float):
        self.window = window
        self.seen: dict[str, float] = {}   # in time order: a name goes in again only after it went out

    def first_in_a_while(self, name: str, now: float) -> bool:
        """True (and remembered) unless ``name`` was seen within the window."""
        seen = self.seen
        while seen and now - next(iter(seen.values())) > self.window:
            del seen[next(iter(seen))]
        if name in seen:
            return False
        seen[name] = now
        return True


class Backoff:
    """Per name: allowed now, and then not for BASE, 2 BASE, 4 BASE ... up to CAP seconds (a
    name left alone for CAP after its last wait starts again at BASE)."""

    def __init__(self, base: float, cap: float):
        self.base, self.cap = base, cap
        self.entries: dict[str, tuple[float, int]] = {}   # name -> (allowed again at, tries)

    def allow(self, name: str, now: float) -> bool:
        entries = self.entries
        while entries and next(iter(entries.values()))[0] + self.cap < now:   # the long-quiet ones
            del entries[next(iter(entries))]
        until, tries = entries.get(name, (0.0, -1))
        if now < until:
            return False
        entries.pop(name, None)   # re-inserted last: roughly in time order for the pruning above
        entries[name] = (now + min(self.cap, self.base * 2 ** (tries + 1)), tries + 1)
        return True


class Placement:
    def __init__(self):
        self.bounced = Recently(PLACEMENT_RETRY)          # tunnels whose agent was asked to name them
        self.moves = Backoff(MOVE_RETRY, PLACEMENT_RETRY)  # tunnels whose agent was asked to move

    def bounce(self, head, subdomain: str, now: float) -> bool:
        """An agent connecting: True when it named no tunnel (and was not asked lately)."""
        return not head.get(p.PLACEMENT_HEADER) and self.bounced.first_in_a_while(subdomain, now)

    def rebalance(self, session, now: float) -> None:
        """Every heartbeat tick, for each session: ask it to Move once its visitors have kept
        arriving through another relay for MOVE_AFTER (then not again for MOVE_RETRY, doubling)."""
        # Visitors attached since the last tick, and those holding an upstream now (a keep-alive
        # connection, from nginx or a peer relay, keeps its upstream between requests).
        held_by_hops = sum(1 for h in session.holders if h.hop)
        hops = session.hops + held_by_hops
        direct = session.direct + len(session.holders) - held_by_hops
        session.hops = session.direct = 0
        if hops <= direct or not session.named or session.moving:
            session.misplaced_since = None
            return
        if session.misplaced_since is None:
            session.misplaced_since = now
            return
        if now - session.misplaced_since < MOVE_AFTER or not self.moves.allow(session.subdomain, now):
            return
        session.moving = True
        log.info("tunnel %s: its visitors arrive at another relay; asking its agent to move there",
                 session.subdomain)
        session.send(p.Move())
