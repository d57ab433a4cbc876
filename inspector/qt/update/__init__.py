"""The update room: the update dialog (plan, progress, result), the ``distill update`` process,
training curves and the model history.
"""
