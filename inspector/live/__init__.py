"""Live inspection: frames from capture → the engine (newest frame wins) → the flagger → the flag
store. Imports capture, edge and store; never Qt.
"""
