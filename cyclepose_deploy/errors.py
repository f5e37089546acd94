"""One exception type for mistakes the user can fix; the CLI prints it as one line and exits 2."""

from __future__ import annotations

from collections.abc import Callable


class UserError(Exception):
    """Bad input or environment: the message names the problem and the fix."""


class OptionError(UserError):
    """A bad value of a named setting. The message names settings as the caller knows them: a Python
    caller reads the argument names (`str(exc)`: "tile 100 must be ..."), the CLI its flags
    (`exc.render(flag)`: "--tile 100 must be ..."). `template` writes each setting as {name};
    `option` is the setting at fault."""

    def __init__(self, option: str, template: str) -> None:
        self.option, self.template = option, template
        super().__init__(self.render(str))

    def render(self, name: Callable[[str], str]) -> str:
        """The message with every {setting} written as name(setting)."""
        return self.template.format_map(_Names(name))


class _Names(dict):  # type: ignore[type-arg]
    def __init__(self, name: Callable[[str], str]) -> None:
        super().__init__()
        self.name = name

    def __missing__(self, key: str) -> str:
        return self.name(key)


def literal(value: object) -> str:
    """A value to place inside an OptionError template (its braces escaped)."""
    return str(value).replace("{", "{{").replace("}", "}}")
