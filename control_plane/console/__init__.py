"""The web console for the platform team, served by the control plane at ``/console``.

:func:`control_plane.console.app.create_console` builds it; ``create_app`` mounts it.
"""
