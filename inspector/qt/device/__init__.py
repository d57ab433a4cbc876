"""The device room: the device panel (find, pair, connect, status: :mod:`.panel`), its pairing dialog,
status text and model actions (push, roll back), the demo device's control and the expert override
dialog.
"""
