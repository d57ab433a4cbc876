"""A model update seen from the app: what goes in (the plan), the ``distill update`` job (its
command line, events and record), going live on a device (deploy), the update protocol (its
events) and the model history. Imports the store, the device link and the edge model; runs
``distill`` in its own process, never imports it.
"""
