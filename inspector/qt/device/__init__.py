"""The device room: the device panel (pair, push, roll back), the demo device's control and the
expert override dialog.
"""
