"""The device link, the laptop's side of it: the one protocol module the agent shares (``protocol``:
endpoints, messages; ``framing``: the stream's bytes; ``openapi``: its document), the client
(``client`` over ``connection``), saved pairings (``pairing``), a device's stream as a live source
(``remote``), package signatures (``signing``) and the demo device on loopback (``demo``). Imports
capture, edge, live and store (a remote device feeds the same live loop).
"""
