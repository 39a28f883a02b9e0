"""The Corral BYOC agent: runs sandboxes inside the customer's own network.

This package ships to customers. It never imports ``control_plane`` or ``billing``;
the wire format both sides share lives in :mod:`byoc_agent.protocol`.
"""

__version__ = "0.1.0"
