"""The fab tasks' option parsing: long options, plus only the short flags a task names.

Invoke derives a short flag from each option's letters; with a dozen options it runs out of letters
and picks '-' from 'reports-dir' (help shows `--=STRING`), and hands out surprising ones (`-e` for
--deadman, where `loadgen run -e` sets a variable). A task here gets `-x` only when it asks for it.
"""

from __future__ import annotations

from fabric.tasks import Task


class OptionTask(Task):
    def __init__(self, *args, short: dict[str, str] | None = None, **kwargs) -> None:
        self.short = dict(short or {})
        super().__init__(*args, **kwargs)
        self.auto_shortflags = False

    def arg_opts(self, name, default, taken_names):
        opts = super().arg_opts(name, default, taken_names)
        if name in self.short:
            opts["names"].append(self.short[name])
        return opts
