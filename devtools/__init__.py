"""Developer tooling beside the product: `mailsvc dev` and the embedded servers it and the tests use.

Installed with the `dev` extra; never part of the service image.
"""
