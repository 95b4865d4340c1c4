"""`mailsvc ops`: the operator's command-line client of the internal HTTP API (SPEC §9, §14).

A client of the public API, nothing more: it imports nothing of the service but `mailsvc.errors`,
so it runs from any machine that can reach the API. `cli` builds the parser and prints answers,
`client` talks HTTP, `registry` says how a subcommand is declared, `commands/` holds them (one
module per group), `tables` renders for people.
"""
