"""Storage: the database, its schema and threads, and the archive (its writer process, journal, spool)."""
