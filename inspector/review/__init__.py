"""Reviewing flags without Qt: the review queue the inspector walks through, and the teachers'
opinion of each flag computed in the background. Imports the store, the edge model and live.
"""
