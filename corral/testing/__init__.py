"""Helpers for testing code that uses Corral: real servers started on free ports."""

from corral.testing.nats_server import NatsServer, free_port

__all__ = ["NatsServer", "free_port"]
