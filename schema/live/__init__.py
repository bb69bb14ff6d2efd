"""The live side of the subscription fields: the hub that follows the broker and the
database once per process and fans each commit out to the subscriptions (hub), what a
subscription field streams (streams), and a hub subscription as plain values (values).
The transport that carries them to clients is the app's (server.live)."""
