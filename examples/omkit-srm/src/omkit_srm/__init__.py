"""Example omkit plug-in package (see plugin.py)."""
