"""The device room: the device panel (find, pair, connect, status: :mod:`.panel`), its pairing dialog,
status text and model actions (push, roll back), the demo device's control and the expert override
dialog.
Imports the plain-Python rooms and the shared Qt modules below the rooms (startup, jobs,
bridge, theme, banner, flow), never the window, main or the self-test.
"""
