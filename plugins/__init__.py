"""omkit's built-in plug-ins. Each module implements the hooks of
:mod:`omkit.hookspecs` exactly as a third-party plug-in would."""
