"""The web console for the platform team, served by the control plane at ``/console``."""

from control_plane.console.app import create_console

__all__ = ["create_console"]
