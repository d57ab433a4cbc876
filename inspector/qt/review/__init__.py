"""The review room: the grid of flags, one frame at full size, filters, metadata and the keyboard.
Imports the plain-Python rooms and the shared Qt modules below the rooms (startup, jobs,
bridge, theme, banner, flow), never the window, main or the self-test.
"""
