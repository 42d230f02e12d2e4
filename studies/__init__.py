"""One-off studies behind the docs: scripts run as ``python -m studies.NAME`` (not part of the library)."""
