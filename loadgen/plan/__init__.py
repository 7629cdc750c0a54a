"""What to run: stages, options and scenarios, validated before any load starts."""
