"""What a run measured, shared by the agent (which writes it) and the report (which reads it).

columns    the CSV row schemas (timeseries.csv, gateway_metrics.csv)
histogram  HdrHistogram cells: record, encode, merge, percentiles
figures    counters and histograms -> the criteria's metrics and the summary's sections
gateway    the gateway formulas: memory per connection, CPU windows, RSS growth
verdict    criteria rows -> PASS / FAIL / PARTIAL -> exit code
text       the summary on stdout (the spec's "Example Output")

Nothing here imports the agent's runtime (picows, uvloop) or pandas.
"""
