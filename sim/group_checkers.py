"""Consumer group membership checkers for `mq sim broker` (checker `group_membership`).

Membership is per node and in memory (mq/broker/consumer_groups.py): a node knows a
consumer from the HEARTBEATs it served since it (re)started, and forgets it on
UNREGISTER_CLIENT, on expiry, or in a crash. The model here is fed by the requests
each node actually serves (the host reports them just before `core.handle`, so a
request buffered by a paused node counts when it is served), per node and reset when
the node restarts:

* during the run, every `Notify` a node emits must go to the connection token of a
  member of the notified group *on that node*: a client that heartbeated the group on
  that connection since the node's restart and has not unregistered since. Expiry can
  only shrink the node's set below the model's, so the model is an upper bound and a
  push outside it is a leak (a stale member, a connection mixed up);
* at the end, after the heal and a settle period longer than the heartbeat interval,
  every node's GET_CONSUMER_LIST must be exactly the consumers still running: each has
  heartbeated every node since the heal, and the one that stopped cleanly has
  unregistered from every node.

Why not compare with the node's own member table: that is the code under test; the
model is built from what the clients did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mq.protocol import Frame, RequestCode, request
from sim.checkers import Violation

if TYPE_CHECKING:
    from sim.broker_cluster import BrokerCluster
    from sim.broker_host import BrokerHost

CHECKER = "group_membership"


class MembershipChecker:
    def __init__(self, cluster: BrokerCluster) -> None:
        self._cluster = cluster
        # node id -> group -> client id -> connection token of its latest heartbeat
        self._members: dict[int, dict[str, dict[str, int]]] = {n: {} for n in cluster.node_ids}
        self.notifies = 0

    def on_restart(self, host: BrokerHost) -> None:
        """A (re)started node knows no consumer: membership is not persisted."""
        self._members[host.id] = {}

    def on_request(self, host: BrokerHost, client: str, frame: Frame) -> None:
        f = frame.fields
        group, client_id = f.get("group"), f.get("client_id")
        if not isinstance(group, str) or not isinstance(client_id, str):
            return
        groups = self._members[host.id]
        if frame.code == RequestCode.HEARTBEAT:
            token = self._cluster.connection_token(client, host.id)
            groups.setdefault(group, {})[client_id] = token
        elif frame.code == RequestCode.UNREGISTER_CLIENT:
            groups.get(group, {}).pop(client_id, None)

    def on_notify(self, host: BrokerHost, token: int, frame: Frame) -> None:
        self.notifies += 1
        group = frame.fields.get("group")
        members = self._members[host.id].get(group, {}) if isinstance(group, str) else {}
        if token not in members.values():
            owner = self._cluster.token_client(token)
            raise Violation(
                CHECKER,
                f"n{host.id} notified connection {token} ({owner}) of a change in group "
                f"{group!r}, but its members there are {sorted(members.items())}",
            )

    def check_final(self, hosts: list[BrokerHost], group: str, live: set[str]) -> None:
        """Every node lists exactly the live consumers (asked through the host's request
        path, so a sim-side plant that answers for the node is seen too)."""
        for host in hosts:
            core = host.core
            assert core is not None
            frame = request(RequestCode.GET_CONSUMER_LIST, {"group": group})
            response: Frame | None = None
            if host.request_filter is not None:
                response = host.request_filter(host, frame, host.now_ms())
            if response is None:
                response = core.handle(frame, 0, host.now_ms())
            assert response is not None and response.ok, response
            listed = response.fields.get("client_ids")
            if listed != sorted(live):
                raise Violation(
                    CHECKER,
                    f"after the heal and a settle period, n{host.id} lists group {group!r} "
                    f"as {listed}, but the running consumers are {sorted(live)}",
                )
