"""`mailsvc bench chaos`: the reproducible run behind "nothing acknowledged is ever lost".

Its own PostgreSQL cluster and Redis (restarted during the run), a recording SMTP sink, a
fault-injecting TCP proxy between every replica and those three, three `mailsvc serve` replicas,
a mixed load, a seeded fault schedule, and a reconciliation over what was recorded. Importing
this package opens nothing; `bench.chaos.run` holds the run.
"""
