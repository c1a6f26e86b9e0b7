"""The one-line config checks every module uses: `ConfigError` and the helpers that raise it.

A leaf (no `research` imports), so the modules that `configs.validate` calls (optim, curriculum,
sharding, the data layer) can raise config errors without importing `configs`.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable


class ConfigError(ValueError):
  """A config problem, phrased as one line: the field, what is wrong, how to fix it."""


def require(ok: bool, field: str, value: Any, why: str) -> None:
  """Raises a one-line ConfigError for `config.<field>` unless `ok`."""
  if not ok:
    raise ConfigError(f'config.{field}={value!r}: {why}')


def parse_list(text: str, field: str, cast: Callable = float) -> list:
  """Comma-separated config strings ('1000,2000') -> list, with a clear error."""
  if not text.strip():
    return []
  try:
    return [cast(t) for t in text.split(',')]
  except ValueError:
    raise ConfigError(f'config.{field}={text!r}: must be comma-separated '
                      f'{cast.__name__}s, e.g. "1000,2000"') from None


def one_of(value, choices: Iterable, field: str) -> None:
  choices = list(choices)
  require(value in choices, field, value, f'must be one of {choices}')
