"""The GraphQL-over-WebSocket protocols the live server speaks, one handler each: base.py holds
what they share, transport_ws.py and legacy_ws.py what is their own. The connection picks one
by the subprotocol the client offers (server.live.websocket)."""
