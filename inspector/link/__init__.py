"""The device link, the laptop's side of it: the one protocol module (endpoints, messages, stream
frames) the agent shares, the client, saved pairings, package signatures and the demo device on
loopback. Imports capture, edge, live and store (a remote device feeds the same live loop).
"""
