"""Helpers for testing code that uses Corral: real servers started on free ports, and
polling for a condition with a deadline."""

from corral.testing.nats_server import NatsServer, free_port
from corral.testing.poll import eventually, eventually_sync

__all__ = ["NatsServer", "eventually", "eventually_sync", "free_port"]
