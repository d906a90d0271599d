"""The node side of every command, in one place: a node's session for a run (its connection
and broker admin session, opened once: session.py), the one way to work on many nodes at
once (session.for_each_name / on_nodes), what a node tells about itself (facts.py) and what
lotdeploy keeps on it (release.py: the release directory, its shell steps)."""
