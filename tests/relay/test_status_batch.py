"""The relay store's status writes in batches (issue 17: 1,000 agents reconnecting after a
restart, or told to go at a stop, must not cost 1,000 transactions): a real database, the
store's own DB thread, no sockets."""

from __future__ import annotations

import asyncio

from intunnel.models import Tunnel
from intunnel.relay.store import Store
from tests.support.tunnel import make_tunnel


def recording(store: Store) -> list[list[tuple]]:
    """The batches the store writes, as they are written."""
    batches: list[list[tuple]] = []
    write = store._set_statuses

    def record(rows):
        batches.append(list(rows))
        write(rows)
    store._set_statuses = record
    return batches


def test_writes_made_together_are_one_batch_and_the_last_per_tunnel_wins(settings, db):
    tunnels = [make_tunnel(settings, f"t{i}", 3000, username=f"user{i}") for i in range(40)]
    store = Store(settings)

    async def main():
        await store.open()
        batches = recording(store)
        await asyncio.gather(*(store.set_status(t.id, True) for t in tunnels),
                             store.set_status(tunnels[0].id, False),            # left again, same turn
                             store.set_status(tunnels[1].id, True, '{"basic_auth":true}'))
        await store.set_status(tunnels[2].id, False)                           # alone: its own batch
        await store.close()
        return batches

    batches = asyncio.run(main())
    assert [len(b) for b in batches] == [42, 1]
    rows = {t.id: t for t in Tunnel.select()}
    first, second, third = (rows[t.id] for t in tunnels[:3])
    assert first.status == "inactive" and first.last_connected is not None and first.disconnected_at is not None
    assert second.status == "active" and second.session_access == '{"basic_auth":true}'
    assert third.status == "inactive" and third.last_connected is not None   # it connected in the first batch
    assert all(rows[t.id].status == "active" and rows[t.id].disconnected_at is None for t in tunnels[3:])


def test_a_failed_batch_fails_its_callers_and_the_next_one_is_written(settings, db):
    tunnel = make_tunnel(settings)
    store = Store(settings)

    async def main():
        await store.open()
        write = store._set_statuses

        def broken(rows):
            store._set_statuses = write
            raise RuntimeError("database gone")
        store._set_statuses = broken
        results = await asyncio.gather(store.set_status(tunnel.id, True), store.set_status(tunnel.id, True),
                                       return_exceptions=True)
        await store.set_status(tunnel.id, True)
        await store.close()
        return results

    results = asyncio.run(main())
    assert [type(r) for r in results] == [RuntimeError, RuntimeError]
    assert Tunnel.get_by_id(tunnel.id).status == "active"


def test_more_tunnels_than_an_in_list_holds(settings, db):
    """A stop with more agents than SQLite's bound-variable limit: written in bounded IN lists."""
    count = 1200
    owner = make_tunnel(settings, "owner", 3000)
    ids = [owner.id] + [Tunnel.create(owner=owner.owner, name=f"n{i}", subdomain=f"n{i}", local_port=1,
                                      token=f"tok-{i}", created_at=owner.created_at).id for i in range(count)]
    store = Store(settings)

    async def main():
        await store.open()
        await asyncio.gather(*(store.set_status(i, True) for i in ids))
        await store.close()

    asyncio.run(main())
    assert Tunnel.select().where(Tunnel.status == "active").count() == len(ids)
