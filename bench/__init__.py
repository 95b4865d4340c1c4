"""`mailsvc bench`: capacity measurement against real PostgreSQL, Redis and an SMTP sink (SPEC §10).

Importing this package opens nothing; `bench.cli` holds the command.
"""
