"""The load agent: workers that open connections, send on schedule, and measure."""
