"""A model update seen from the app: what goes in (the plan), the ``distill update`` command, the
update protocol (its events) and the model history. Imports the store, the device link and the
edge model; runs ``distill`` in its own process, never imports it.
"""
