"""The inspection report an inspector hands to the structure's owner: its content read from the
flag store, rendered as HTML or PDF. Imports the store and the edge model (heat-map overlays).
"""
