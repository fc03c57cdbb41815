"""Errors that map to the documented exit codes (0 ok, 1 build failed, 2 bad input).

Raised inside a Ray task (a `map_batches` function, an actor), they reach the driver
wrapped by Ray; `unwrap` finds them again so the CLI can report them as themselves.
"""

from __future__ import annotations

import re
import sys

# "module.QualName" (as Python's traceback prints it) -> class, for every error below
# and its subclasses: how `unwrap` recognises one in a worker's traceback text.
_BY_TRACEBACK_NAME: dict[str, type[SynthError]] = {}


def _traceback_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module in ("__main__", "builtins") else f"{module}.{cls.__qualname__}"


class SynthError(Exception):
    """An error the CLI reports as one line and an exit code, without a traceback."""

    exit_code = 1

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _BY_TRACEBACK_NAME[_traceback_name(cls)] = cls


class BadInput(SynthError):
    """User input is wrong (config, template, seed pool, CLI argument). Exit code 2.

    The message must name the file and the field, key or line at fault.
    """

    exit_code = 2


class BuildFailed(SynthError):
    """The build could not complete (engine dead, failure budget exceeded). Exit code 1."""

    exit_code = 1


def unwrap(exc: BaseException) -> BadInput | BuildFailed | None:
    """The BadInput or BuildFailed behind `exc`, or None if there is none.

    `exc` itself, or one found through Ray's wrappers (`RayTaskError.cause`, its
    `RayTaskError(BadInput)` dual class, whose text is Ray's traceback, not the message)
    and explicit `raise ... from` causes. `__context__` (an exception raised while
    handling another) is followed only out of Ray's own exceptions: a bug in synth's
    code while handling bad input is a bug, not bad input.

    Ray Data wraps an error raised in a `map_batches` function in a `UserCodeException`
    whose cause does not survive the trip to the driver; only the worker's traceback
    text does. From that text the error is rebuilt: same class, same message.
    """
    ray_errors: list[BaseException] = []
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    while queue:
        e = queue.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        from_ray = _is_ray_error(e)
        if from_ray:
            ray_errors.append(e)
            cause = e.__dict__.get("cause")  # RayTaskError; the dual class forwards other attributes
            if isinstance(cause, BaseException):
                queue.append(cause)
        elif isinstance(e, (BadInput, BuildFailed)):
            return e
        queue.append(e.__cause__)
        if from_ray and not e.__suppress_context__:
            queue.append(e.__context__)
    for e in ray_errors:
        found = _from_traceback_text(_ray_text(e))
        if found is not None:
            return found
    return None


def _is_ray_error(e: BaseException) -> bool:
    ray_exceptions = sys.modules.get("ray.exceptions")  # no Ray imported: no Ray error
    if ray_exceptions is None:
        return False
    return isinstance(e, ray_exceptions.RayError) or type(e).__module__.split(".")[0] == "ray"


def _ray_text(e: BaseException) -> str:
    text = e.__dict__.get("traceback_str")
    if not isinstance(text, str):
        try:
            text = str(e)
        except Exception:  # noqa: BLE001 - a broken __str__ just means nothing to find
            return ""
    return _ANSI.sub("", text)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# What ends an exception's message in a formatted chain of tracebacks.
_CHAIN_SEPARATOR = re.compile(
    r"\n\n(?:The above exception was the direct cause of the following exception:"
    r"|During handling of the above exception, another exception occurred:)\n"
)


def _from_traceback_text(text: str) -> BadInput | BuildFailed | None:
    """The first (innermost) synth error in a formatted traceback, rebuilt from its last line."""
    if not _BY_TRACEBACK_NAME or not text:
        return None
    names = "|".join(re.escape(n) for n in sorted(_BY_TRACEBACK_NAME, key=len, reverse=True))
    match = re.search(rf"^({names}): ", text, re.MULTILINE)
    if match is None:
        return None
    rest = text[match.end():]
    end = _CHAIN_SEPARATOR.search(rest)
    message = (rest[: end.start()] if end else rest).rstrip("\n")
    cls = _BY_TRACEBACK_NAME[match.group(1)]
    try:
        error = cls(message)
    except Exception:  # noqa: BLE001 - a subclass with another signature: keep kind and message
        error = (BadInput if issubclass(cls, BadInput) else BuildFailed)(message)
    if not isinstance(error, (BadInput, BuildFailed)):
        return None
    return error
