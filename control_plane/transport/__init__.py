"""How the control plane talks to agents. Only :mod:`control_plane.transport.nats` imports nats."""

from control_plane.transport.base import Disposition, Inbox, Publisher
from control_plane.transport.memory import MemoryPublisher

__all__ = ["Disposition", "Inbox", "MemoryPublisher", "Publisher"]
