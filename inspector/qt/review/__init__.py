"""The review room: the grid of flags, one frame at full size, filters, metadata and the keyboard.
"""
