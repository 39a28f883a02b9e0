"""Hosts the agent provisions in the customer's cloud: lifecycle, autoscaling, placement.

``phases`` is the recorded lifecycle; ``autoscale`` the pure scale-out/scale-in decision;
``fleet`` drives both against a :class:`~byoc_agent.providers.base.HostProvider`, with the
agent's SQLite state as the record. Import ``fleet`` from its module (it pulls in the
state store); this package's root stays import-light so the store can use ``phases``.
"""
