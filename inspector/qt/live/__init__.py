"""The live room of the window: the video view, the HUD, the controls, the source picker and the
flags panel.
"""
