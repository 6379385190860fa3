"""The per-executor netspark server: owns the arena, serves committed outputs, fetches."""
