"""The live transport: subscriptions over WebSocket (both GraphQL protocols), each operation's
selection executed once per item of its feed, and the writes that carry the messages to clients.
What the subscriptions stream, and the hub that feeds them, are the schema's (schema.live)."""
