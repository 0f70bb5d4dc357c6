"""The MCP server: every job type a principal may submit is a tool, run as an MCP task.

An add-on app (it imports jobs, governance, audit and common; nothing imports it). The ASGI
app it builds (:func:`mcp_server.server.mcp_asgi_app`) is mounted at ``/mcp`` by
``config/asgi.py``. See docs/mcp.md.
"""
