"""Kasparro price service: runtime core and HTTP/WebSocket app.

Kept import-light: workers import `server.db` and `server.settings` without Starlette.
"""

__version__ = "0.1.0"
