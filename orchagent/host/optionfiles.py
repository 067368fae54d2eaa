"""MySQL/MariaDB option files (my.cnf) read the way the server reads them.

V1 grepped ``/etc/my.cnf`` for ``log[-_]error`` (contract D.1.22): comments, ``log_error_verbosity``,
``!include`` files and Debian's ``/etc/mysql`` layout all broke it.  Here the files are parsed
properly: groups, quoting, escapes, ``loose-`` prefixes, ``-``/``_`` equivalence, ``!include`` and
``!includedir``, later values overriding earlier ones.

:func:`parse_option_text` is a pure function over one file's text; :func:`read_server_options`
follows includes through the file system (call it in a thread).
"""

from __future__ import annotations

import os
import re
from typing import Callable, Iterable, Iterator

import attrs

#: The files mariadbd/mysqld read when no --defaults-file is given (the ones a host agent can see).
DEFAULT_OPTION_FILES = ("/etc/my.cnf", "/etc/mysql/my.cnf")

#: Groups the server reads.  Versioned variants (``[mariadb-10.11]``, ``[mysqld-8.0]``) are read
#: too; the agent does not know the server version, so it accepts every version.
SERVER_GROUPS = frozenset({"mysqld", "server", "mariadb", "mariadbd", "client-server", "galera"})
_VERSIONED_GROUP = re.compile(r"(mysqld|server|mariadb|mariadbd)-\d+(\.\d+)*")

#: Include nesting deeper than this is a loop (MariaDB itself stops at 10).
MAX_INCLUDE_DEPTH = 10

_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "r": "\r", "\\": "\\", "s": " ", '"': '"', "'": "'"}


class OptionFileError(Exception):
    """An option file cannot be read or parsed; the message names the file and line."""


@attrs.frozen
class Option:
    group: str
    name: str  # normalised: lower case, ``_`` for ``-``, without ``loose-``
    value: str | None  # None for a bare boolean option such as ``log-bin``


@attrs.frozen
class Include:
    path: str
    is_directory: bool


def parse_option_text(text: str, where: str = "option file") -> list[Option | Include]:
    """Options and include directives of one file, in order.  ``where`` names it in errors."""
    items: list[Option | Include] = []
    group = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("!"):
            directive, _, argument = line.replace("\t", " ").partition(" ")
            argument = argument.strip()
            if directive not in ("!include", "!includedir") or not argument:
                raise OptionFileError(f"{where}:{number}: unknown directive {line!r}")
            items.append(Include(argument, directive == "!includedir"))
            continue
        if line.startswith("["):
            if "]" not in line:
                raise OptionFileError(f"{where}:{number}: group header without ']': {line!r}")
            group = line[1:line.index("]")].strip().lower()
            continue
        if group is None:
            raise OptionFileError(f"{where}:{number}: option {line!r} appears before any [group]")
        name, equals, value = line.partition("=")
        name = _normalise_name(name)
        items.append(Option(group, name, _parse_value(value, where, number) if equals else None))
    return items


def is_server_group(group: str) -> bool:
    return group in SERVER_GROUPS or _VERSIONED_GROUP.fullmatch(group) is not None


def read_server_options(
    paths: Iterable[str],
    *,
    must_exist: bool = False,
    read_text: Callable[[str], str] | None = None,
    list_directory: Callable[[str], list[str]] = os.listdir,
) -> dict[str, str | None]:
    """The server's options from ``paths``, last value wins.

    Missing files in ``paths`` are skipped (as the server skips its default files) unless
    ``must_exist`` (a --defaults-file); a missing included file is an error, as for the server.
    """
    read_text = read_text or _read_text
    options: dict[str, str | None] = {}
    for path in paths:
        try:
            text = read_text(path)
        except FileNotFoundError:
            if must_exist:
                raise OptionFileError(f"{path} does not exist") from None
            continue
        for option in _options_of(path, text, read_text, list_directory, depth=0):
            if is_server_group(option.group):
                options[option.name] = option.value
    return options


def _options_of(path, text, read_text, list_directory, depth) -> Iterator[Option]:
    if depth > MAX_INCLUDE_DEPTH:
        raise OptionFileError(f"{path}: includes nested deeper than {MAX_INCLUDE_DEPTH} (an include loop?)")
    for item in parse_option_text(text, path):
        if isinstance(item, Option):
            yield item
            continue
        target = os.path.join(os.path.dirname(path), item.path)
        for included in _included_files(target, item.is_directory, list_directory, path):
            try:
                included_text = read_text(included)
            except OSError as e:
                raise OptionFileError(f"{path}: cannot read included file {included}: {e.strerror}") from None
            yield from _options_of(included, included_text, read_text, list_directory, depth + 1)


def _included_files(target: str, is_directory: bool, list_directory, including: str) -> list[str]:
    if not is_directory:
        return [target]
    try:
        names = list_directory(target)
    except OSError as e:
        raise OptionFileError(f"{including}: cannot list !includedir {target}: {e.strerror}") from None
    return [os.path.join(target, name) for name in sorted(names) if name.endswith(".cnf")]


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise OptionFileError(f"cannot read option file {path}: {e.strerror}") from None


def _normalise_name(name: str) -> str:
    name = name.strip().lower().replace("-", "_")
    return name[len("loose_"):] if name.startswith("loose_") else name


def _parse_value(value: str, where: str, number: int) -> str:
    """A value as the server sees it: quotes removed, escapes applied, ``#`` comments cut."""
    value = value.strip()
    if value[:1] in ("'", '"'):
        quoted = re.match(r"""(['"])((?:\\.|(?!\1).)*)\1""", value)
        if quoted is None:
            raise OptionFileError(f"{where}:{number}: unterminated {value[0]} quote in {value!r}")
        value = quoted.group(2)
    else:
        value = re.split(r"\s#", value, maxsplit=1)[0].rstrip()
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), value)
