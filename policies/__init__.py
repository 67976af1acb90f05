"""The policy engine: who may do what, and which approval chain an action needs.

`snapshot` and `rules` are pure and deterministic, so workflows import them too;
`engine` loads and validates the YAML data files.
"""
