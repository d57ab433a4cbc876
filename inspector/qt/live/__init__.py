"""The live room of the window: the video view, the HUD, the controls, the source picker and the
flags panel.
Imports the plain-Python rooms and the shared Qt modules below the rooms (startup, jobs,
bridge, theme, banner, flow), never the window, main or the self-test.
"""
