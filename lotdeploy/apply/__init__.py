"""Apply: carry out a plan on the nodes, through a transport and the broker's command channel.

release.py  the node's side: releases, the `current` link, TLS files, the reload
activate.py the broker's side: users, then routes, one at a time, only lotdeploy's own
engine.py   the order across nodes, bounded parallelism, state and journal after every step
events.py   what a run reports (people get a live display, machines JSON lines)
"""
