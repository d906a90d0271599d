"""Rollouts: apply wave by wave, a verify gate after each wave, rollback on failure.

`waves` is pure (which nodes go in which wave); `run` drives apply through the waves with an
injected gate; `restore` puts a node back on an earlier release; `gate` holds the gates;
`confirm` is confirm-or-revert (a node-side timer that undoes an unconfirmed switch).
See docs/rollout.md.
"""
