"""`fab capacity`: one continuous run that steps the load up, judges every step on its own data, and names the
knee and what ran out first.

plan (loadgen.plan.capacity) -> search.py (which load next: climb, then bounded bisection) -> run.py (start the
fleet as `fab cluster-test` does, step the agents' load through the control channel, read their rows live)
-> judge.py (a step's figures from the fleet's merged histograms of that step's window) -> cause.py (why a step
failed, generators first) -> capacity.json in the run directory; the report adds its capacity section
(loadgen.report.capacity) and summary.json carries the knee and the cause.
"""
