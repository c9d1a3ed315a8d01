"""How the three commands' --help reads (fmnist-train, fmnist-serve, fmnist): each option's
default as the command then takes it, and every text filled to the terminal's width, no word
broken at a hyphen, by one formatter (``common.flags.ArgumentParser``'s)."""

import argparse
import copy


class Refused:
    """The default of an option whose env var holds a bad value: ``ArgumentParser`` raises
    ``error`` unless the option's flag replaced it."""

    def __init__(self, error: ValueError):
        self.error = error

    def __str__(self) -> str:  # in --help: "(default: refused: FMNIST_TARGET: expected ...)"
        return f"refused: {self.error}"


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless its help tells it or there is none ("(default: the
    server's) (default: )" said nothing twice); an env var's refused value whatever the help
    says ("(default: refused: FMNIST_SEED: ...)"): not the default the command then takes."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if "%(default)" not in (action.help or "") and isinstance(action.default, Refused):
            return f"{action.help or ''} (default: %(default)s)"
        if action.default is None or action.default is False or action.default in ("", []) \
                or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)

    def _expand_help(self, action: argparse.Action) -> str:
        """A list default as its flag takes it (512,256), None as none_word, a switch's "on" or
        "off", its variable's words, not True (off only where the help asks); the env var last."""
        if isinstance(action.default, tuple) or action.default is True or (
                action.default is False and "%(default)" in (action.help or "")) or (
                action.default is None and getattr(action.type, "none_word", "")):
            action = copy.copy(action)
            action.default = (
                ("off", "on")[action.default] if isinstance(action.default, bool)
                else ",".join(map(str, action.default)) if action.default is not None
                else action.type.none_word)
        head, env, tail = super()._expand_help(action).partition(getattr(action, "env_tag", "\0"))
        return f"{head}{tail} {env}"  # "[env X] (default: 42)" where this formatter added it

    def _split_lines(self, text: str, width: int) -> list[str]:
        """No break in "[env FMNIST_X]" nor at a hyphen: "[env", "--tls-", "test-" ended lines."""
        return [line.translate({0xA0: " ", 0x2011: "-"}) for line in super()._split_lines(
            text.replace("[env ", "[env\xa0").replace("-", "\u2011"), width)]  # no breaks

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        """A description or epilog filled as an option's help is, paragraph by paragraph (a
        blank line apart); an indented line (an example's command) as written."""
        lines, prose = [], []
        for line in [*text.splitlines(), ""]:  # (the last "": the last paragraph's end)
            if line and not line.startswith(" "):
                prose.append(line)
                continue
            if prose:
                lines += self._split_lines(" ".join(prose), width - len(indent))
            lines.append(line)
            prose = []
        return "\n".join(indent + line if line else "" for line in lines[:-1])
