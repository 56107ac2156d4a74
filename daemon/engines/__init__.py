"""Engines: one module per task family. Engines never touch the inbox or the outbox."""
