"""The parts of urfave/cli v1.22.2 (and Go's `flag` package) that rke's command line shows.

- Global flags come before the subcommand; a command's own flags may come anywhere after it
  (urfave reorders known flags in front of positional arguments).
- A flag error prints `Incorrect Usage. <err>` (global) or `Incorrect Usage: <err>` (command)
  and the help on stdout, then the error is returned (rke turns it into a FATA line, exit 1).
- An unknown command prints `No help topic for 'x'` on stderr and exits 3.
- Help texts are rendered like urfave's templates through Go's tabwriter (padding 2).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field


class UsageError(Exception):
    """A flag parse error (Go's flag package text)."""


class ExitError(Exception):
    """urfave's ExitCoder: message to stderr, exit with `code`."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


@dataclass
class Flag:
    name: str
    usage: str
    kind: str = "bool"  # bool | string | slice
    value: str = ""
    envvar: str = ""

    @property
    def names(self) -> list[str]:
        return [n.strip() for n in self.name.split(",")]

    def help(self) -> str:
        placeholder = "" if self.kind == "bool" else "value"
        parts = []
        for n in self.names:
            text = ("-" if len(n) == 1 else "--") + n
            parts.append(text + (" " + placeholder if placeholder else ""))
        usage = self.usage
        if self.kind == "string" and self.value:
            usage += f' (default: "{self.value}")'
        line = ", ".join(parts) + "\t" + usage.strip()
        if self.envvar:
            line += f" [${self.envvar}]"
        return line


HELP_FLAG = Flag("help, h", "show help")
VERSION_FLAG = Flag("version, v", "print the version")


@dataclass
class Command:
    name: str
    usage: str
    action: Callable[[Context], None] | None = None
    flags: list[Flag] = field(default_factory=list)
    subcommands: list[Command] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    help_name: str = ""

    @property
    def names(self) -> list[str]:
        return [self.name, *self.aliases]


class Context:
    def __init__(self, values: dict, args: list[str], parent: Context | None = None) -> None:
        self.values = values
        self.args = args
        self.parent = parent

    def _get(self, name: str, default):
        ctx = self
        while ctx is not None:
            if name in ctx.values:
                return ctx.values[name]
            ctx = ctx.parent
        return default

    def bool(self, name: str) -> bool:
        return bool(self.values.get(name, False))

    def string(self, name: str) -> str:
        return self.values.get(name, "")

    def string_slice(self, name: str) -> list[str]:
        return list(self.values.get(name, []))

    def global_bool(self, name: str) -> bool:
        return bool(self._get(name, False))


def parse_flags(flags: list[Flag], args: list[str]) -> tuple[dict, list[str]]:
    """Go's flag.FlagSet.Parse with urfave's flag types; returns values and positional args."""
    by_name = {n: f for f in flags for n in f.names}
    values: dict = {}
    for f in flags:
        default: object
        if f.kind == "bool":
            default = False
        elif f.kind == "slice":
            default = []
        else:
            default = f.value
            if f.envvar:
                for env in f.envvar.split(","):
                    if env.strip() in os.environ:
                        default = os.environ[env.strip()]
                        break
        for n in f.names:
            values[n] = default
    slices: dict[str, list[str]] = {}
    rest = list(args)
    while rest:
        s = rest[0]
        if len(s) < 2 or s[0] != "-":
            break
        minuses = 1
        if s[1] == "-":
            minuses = 2
            if len(s) == 2:
                rest = rest[1:]
                break
        name = s[minuses:]
        if not name or name[0] in "-=":
            raise UsageError(f"bad flag syntax: {s}")
        rest = rest[1:]
        has_value, value = False, ""
        if "=" in name[1:]:
            i = name.index("=", 1)
            name, value, has_value = name[:i], name[i + 1 :], True
        flag = by_name.get(name)
        if flag is None:
            raise UsageError(f"flag provided but not defined: -{name}")
        if flag.kind == "bool":
            if has_value:
                if value in _TRUE:
                    result = True
                elif value in _FALSE:
                    result = False
                else:
                    raise UsageError(f'invalid boolean value "{value}" for -{name}: parse error')
            else:
                result = True
        else:
            if not has_value and rest:
                value, rest, has_value = rest[0], rest[1:], True
            if not has_value:
                raise UsageError(f"flag needs an argument: -{name}")
            result = value
        if flag.kind == "slice":
            key = flag.names[0]
            slices.setdefault(key, []).append(result)
            result = slices[key]
        for n in flag.names:
            values[n] = result
    return values, rest


def reorder(flags: list[Flag], args: list[str]) -> list[str]:
    """urfave's reorderArgs: known flags (and their values) before the other arguments."""
    names = {n for f in flags for n in f.names}
    reordered: list[str] = []
    remaining: list[str] = []
    next_may_be_value = False
    for i, arg in enumerate(args):
        if arg == "--":
            remaining.extend(args[i:])
            break
        if next_may_be_value and not arg.startswith("-"):
            next_may_be_value = False
            reordered.append(arg)
        elif arg != "-" and arg.startswith("-") and _flag_name(arg) in names:
            reordered.append(arg)
            next_may_be_value = "=" not in arg
        else:
            remaining.append(arg)
    return reordered + remaining


def _flag_name(arg: str) -> str:
    if arg.startswith("--"):
        arg = arg[2:]
    elif arg.startswith("-"):
        arg = arg[1:]
    return arg.split("=")[0]


def tabwrite(text: str, padding: int = 2) -> str:
    """Go's text/tabwriter (minwidth 1, padding 2, spaces) for one-tab-per-line text."""
    lines = text.split("\n")
    out: list[str] = []
    block: list[str] = []

    def flush() -> None:
        if not block:
            return
        width = max(len(line.split("\t", 1)[0]) for line in block) + padding
        for line in block:
            cell, rest = line.split("\t", 1)
            out.append(cell.ljust(width) + rest)
        block.clear()

    for line in lines:
        if "\t" in line:
            block.append(line)
        else:
            flush()
            out.append(line)
    flush()
    return "\n".join(out)


class App:
    def __init__(
        self,
        name: str,
        version: str,
        usage: str,
        author: str,
        commands: list[Command],
        flags: list[Flag],
        before: Callable[[Context], None] | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.usage = usage
        self.author = author
        self.help_name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else name
        self.commands = [*commands, _help_command()]
        self.flags = [*flags, HELP_FLAG, VERSION_FLAG]
        self.before = before
        for c in self.commands:
            c.help_name = f"{self.help_name} {c.name}"

    # --- help -------------------------------------------------------------------------------
    def app_help(self) -> str:
        lines = [
            "NAME:",
            f"   {self.help_name} - {self.usage}",
            "",
            "USAGE:",
            f"   {self.help_name} [global options] command [command options] [arguments...]",
            "",
            "VERSION:",
            f"   {self.version}",
            "",
            "AUTHOR:",
            f"   {self.author}",
            "",
            "COMMANDS:",
        ]
        lines += [f"   {', '.join(c.names)}\t{c.usage}" for c in self.commands]
        lines += ["", "GLOBAL OPTIONS:"]
        lines += [f"   {f.help()}" for f in self.flags]
        return tabwrite("\n".join(lines)) + "\n"

    @staticmethod
    def command_help(c: Command) -> str:
        flags = [*c.flags, HELP_FLAG] if c.flags else []
        lines = [
            "NAME:",
            f"   {c.help_name} - {c.usage}",
            "",
            "USAGE:",
            f"   {c.help_name}{' [command options]' if flags else ''} [arguments...]",
        ]
        if flags:
            lines += ["", "OPTIONS:"]
            lines += [f"   {f.help()}" for f in flags]
            lines.append("   ")
        return tabwrite("\n".join(lines)) + "\n"

    @staticmethod
    def subcommand_help(c: Command) -> str:
        subs = [*c.subcommands, _help_command()]
        lines = [
            "NAME:",
            f"   {c.help_name} - {c.usage}",
            "",
            "USAGE:",
            f"   {c.help_name} command [command options] [arguments...]",
            "",
            "COMMANDS:",
        ]
        lines += [f"   {', '.join(s.names)}\t{s.usage}" for s in subs]
        lines += ["", "OPTIONS:", f"   {HELP_FLAG.help()}", "   "]
        return tabwrite("\n".join(lines)) + "\n"

    # --- run --------------------------------------------------------------------------------
    def run(self, argv: list[str]) -> None:
        out = sys.stdout
        try:
            values, args = parse_flags(self.flags, argv[1:])
        except UsageError as exc:
            out.write(f"Incorrect Usage. {exc}\n\n")
            out.write(self.app_help())
            raise
        ctx = Context(values, args)
        if values.get("help"):
            out.write(self.app_help())
            return
        if values.get("version"):
            out.write(f"{self.name} version {self.version}\n")
            return
        if self.before:
            self.before(ctx)
        if args:
            command = self._find(self.commands, args[0])
            if command is not None:
                self._run_command(command, ctx, args[1:])
                return
        self._help_action(ctx, args, self.commands)

    @staticmethod
    def _find(commands: list[Command], name: str) -> Command | None:
        for c in commands:
            if name in c.names:
                return c
        return None

    def _help_action(self, ctx: Context, args: list[str], commands: list[Command]) -> None:
        if not args:
            sys.stdout.write(self.app_help())
            return
        self._show_command_help(commands, args[0])

    def _show_command_help(self, commands: list[Command], name: str) -> None:
        target = self._find(commands, name)
        if target is None:
            raise ExitError(f"No help topic for '{name}'", 3)
        if target.subcommands:
            sys.stdout.write(self.subcommand_help(target))
        else:
            sys.stdout.write(self.command_help(target))

    def _run_command(self, c: Command, parent: Context, args: list[str]) -> None:
        out = sys.stdout
        if c.name == "help":
            self._help_action(parent, args, self.commands)
            return
        if c.subcommands:
            try:
                values, rest = parse_flags([HELP_FLAG], args)
            except UsageError as exc:
                out.write(f"Incorrect Usage. {exc}\n\n")
                out.write(self.subcommand_help(c))
                raise
            if values.get("help"):
                out.write(self.subcommand_help(c))
                return
            subs = [*c.subcommands, _help_command()]
            for s in c.subcommands:
                s.help_name = f"{c.help_name} {s.name}"
            if rest:
                sub = self._find(c.subcommands, rest[0])
                if sub is not None:
                    self._run_command(sub, Context(values, rest, parent), rest[1:])
                    return
                if rest[0] in ("help", "h"):
                    if len(rest) > 1:
                        self._show_command_help(subs, rest[1])
                    else:
                        out.write(self.subcommand_help(c))
                    return
                raise ExitError(f"No help topic for '{rest[0]}'", 3)
            out.write(self.subcommand_help(c))
            return
        flags = [*c.flags, HELP_FLAG]
        try:
            values, rest = parse_flags(flags, reorder(flags, args))
        except UsageError as exc:
            out.write(f"Incorrect Usage: {exc}\n\n")
            out.write(self.command_help(c))
            raise
        if values.get("help"):
            out.write(self.command_help(c))
            return
        if c.action is not None:
            c.action(Context(values, rest, parent))


def _help_command() -> Command:
    return Command(
        "help", "Shows a list of commands or help for one command", aliases=["h"], help_name="help"
    )
