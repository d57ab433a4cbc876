"""The flag store: flagged frames, heat-maps and the inspector's review in one SQLite file: the
database, its schema and migrations, review writes and their history, queries, argument checks,
the heat-map PNG and the export for distillation. Imports only inspector's base modules.
"""
