"""What runs inside a microVM, and how the agent talks to it.

``wire.py`` is the framing both sides share; ``guestd.py`` is the in-guest daemon (standard
library only: it runs on the template's own ``python3``); ``image.py`` fetches the guest kernel
and builds the initramfs and root-disk images; ``channel.py`` is the agent's side of the
virtio-serial (or vsock) connection; ``ops.py`` runs commands and handles files over it for both
microVM runtimes.
"""
