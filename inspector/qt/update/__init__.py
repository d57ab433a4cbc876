"""The update room: the update dialog (plan, progress, result), the ``distill update`` process,
training curves and the model history.
Imports the plain-Python rooms and the shared Qt modules below the rooms (startup, jobs,
bridge, theme, banner, flow), never the window, main or the self-test.
"""
