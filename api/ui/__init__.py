"""The web UI (issue 7): see views.py."""
