"""Persistence: the database and the on-disk layout under the data folder."""
