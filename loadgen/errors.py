"""Errors that end a command with one line and a defined exit code (never a traceback)."""

EXIT_OK = 0
EXIT_FAILURE = 1  # something broke (unreachable gateway, dead workers, I/O error), or the run is PARTIAL
EXIT_USAGE = 2  # bad input: options, files, inventory
EXIT_CRITERIA = 99  # the run completed but a success criterion failed (as k6 does)


class LoadgenError(Exception):
    """An expected failure; the message is shown to the user as one line."""

    exit_code = EXIT_FAILURE


class UsageError(LoadgenError):
    exit_code = EXIT_USAGE
