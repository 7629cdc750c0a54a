"""The traffic model: what each user sends, how big, when, for how long it stays, and with whom (docs/traffic.md).

model.py parses and checks a `traffic:` section once (at plan time); keyed.py, dists.py and arrivals.py are the
deterministic draws the agent makes from it; schedule.py is the agent's open-model send schedule.
"""
