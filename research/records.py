"""Record store: generated samples and their scores, prompt/response generations, preference
pairs and user feedback, in one SQLite file (stdlib `sqlite3` only).

Why SQLite in WAL mode: the trainer, evaluators and labeling tools are separate processes.
WAL lets any number of readers run while one writer commits, and writers queue on a lock
instead of failing; `busy_timeout` plus a retry with backoff around every write transaction
means concurrent writers lose no row (tests/test_records.py runs four writer processes).

Why hashed ids: labeler and user ids are personal data we never need in clear. They are stored
only as SHA-256(salt || id), the salt created once per store in the `store_meta` table, so the
same person maps to the same hash inside one store (to group or dedupe labels) but the raw id
is never written to the file. This is pseudonymization, not anonymity: whoever holds the file
(and so the salt) can test a guessed id; hashes from two different stores do not match.

Why `source`: synthetic and model-written data must never be mistaken for human data (the RLHF
reward model trains from `preferences`), so generations, preferences and feedback carry a
`source` column constrained by CHECK to 'human' / 'synthetic' / 'model'.

Concurrency contract: use ONE `RecordStore` (one connection) per process and per thread. Do not
share a store across threads and do not carry an open store through `fork`; open a new one in
the child. All SQL is parameterized; table and column names come only from the fixed
whitelist `TABLES` below.

Schema versioning: `PRAGMA user_version` holds the schema version; `MIGRATIONS` lists the
statements that take version n-1 to n. To change the schema, append a migration; stores are
upgraded on open, inside one write transaction.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import random
import secrets
import sqlite3
import tempfile
import time
from typing import Any, Callable, Iterable

SOURCES = ('human', 'synthetic', 'model')
_SRC_CHECK = "CHECK (source IN ('human', 'synthetic', 'model'))"

# MIGRATIONS[i] takes the schema from version i to i + 1.
MIGRATIONS: list[list[str]] = [
    [
        'CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)',
        'CREATE TABLE samples (id INTEGER PRIMARY KEY, run TEXT, step INTEGER, kind TEXT NOT NULL,'
        ' content TEXT, path TEXT, metadata TEXT, created_at TEXT NOT NULL,'
        ' CHECK (content IS NOT NULL OR path IS NOT NULL))',
        'CREATE INDEX samples_run ON samples (run, step)',
        'CREATE TABLE scores (id INTEGER PRIMARY KEY,'
        ' sample_id INTEGER NOT NULL REFERENCES samples (id) ON DELETE CASCADE,'
        ' metric TEXT NOT NULL, value REAL NOT NULL, created_at TEXT NOT NULL)',
        'CREATE INDEX scores_sample ON scores (sample_id, metric)',
        'CREATE TABLE generations (id INTEGER PRIMARY KEY, prompt TEXT NOT NULL,'
        ' response TEXT NOT NULL, model TEXT, run TEXT, source TEXT NOT NULL ' + _SRC_CHECK + ','
        ' metadata TEXT, created_at TEXT NOT NULL)',
        'CREATE TABLE preferences (id INTEGER PRIMARY KEY, prompt TEXT NOT NULL,'
        ' chosen TEXT NOT NULL, rejected TEXT NOT NULL, labeler_hash TEXT,'
        ' source TEXT NOT NULL ' + _SRC_CHECK + ', score REAL, metadata TEXT,'
        ' created_at TEXT NOT NULL)',
        'CREATE INDEX preferences_source ON preferences (source)',
        'CREATE TABLE feedback (id INTEGER PRIMARY KEY, target_type TEXT NOT NULL,'
        ' target_id TEXT NOT NULL, user_hash TEXT, rating REAL, comment TEXT,'
        ' source TEXT NOT NULL ' + _SRC_CHECK + ', metadata TEXT, created_at TEXT NOT NULL)',
        'CREATE INDEX feedback_target ON feedback (target_type, target_id)',
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)

_STR, _INT, _NUM, _DICT, _HASH = 'str', 'int', 'number', 'object', 'hash'


@dataclasses.dataclass(frozen=True)
class _Table:
  columns: dict[str, str]          # column -> type tag, in insertion/export order
  required: tuple[str, ...] = ()
  defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
  raw_id: tuple[str, str] | None = None   # (raw id field accepted on input, hash column)
  keep_id: bool = False            # keep `id` on import (samples: scores refer to it)


# The whitelist: the only table and column names that ever reach an SQL string.
TABLES: dict[str, _Table] = {
    'samples': _Table(
        {'id': _INT, 'run': _STR, 'step': _INT, 'kind': _STR, 'content': _STR, 'path': _STR,
         'metadata': _DICT, 'created_at': _STR}, required=('kind',), keep_id=True),
    'scores': _Table(
        {'id': _INT, 'sample_id': _INT, 'metric': _STR, 'value': _NUM, 'created_at': _STR},
        required=('sample_id', 'metric', 'value')),
    'generations': _Table(
        {'id': _INT, 'prompt': _STR, 'response': _STR, 'model': _STR, 'run': _STR,
         'source': _STR, 'metadata': _DICT, 'created_at': _STR},
        required=('prompt', 'response'), defaults={'source': 'model'}),
    'preferences': _Table(
        {'id': _INT, 'prompt': _STR, 'chosen': _STR, 'rejected': _STR, 'labeler_hash': _HASH,
         'source': _STR, 'score': _NUM, 'metadata': _DICT, 'created_at': _STR},
        required=('prompt', 'chosen', 'rejected', 'source'),
        raw_id=('labeler_id', 'labeler_hash')),
    'feedback': _Table(
        {'id': _INT, 'target_type': _STR, 'target_id': _STR, 'user_hash': _HASH,
         'rating': _NUM, 'comment': _STR, 'source': _STR, 'metadata': _DICT,
         'created_at': _STR},
        required=('target_type', 'target_id'), defaults={'source': 'human'},
        raw_id=('user_id', 'user_hash')),
}


class RecordError(ValueError):
  """A record that does not fit its table (missing field, wrong type, bad source)."""


@dataclasses.dataclass
class ImportReport:
  """What `import_jsonl` did: rows imported, and (1-based line number, reason) per skipped line."""
  imported: int = 0
  skipped: list[tuple[int, str]] = dataclasses.field(default_factory=list)


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='microseconds')


def _is_busy(e: BaseException) -> bool:
  if not isinstance(e, sqlite3.OperationalError):
    return False
  msg = str(e).lower()
  return 'locked' in msg or 'busy' in msg


def _table(name: str) -> _Table:
  if name not in TABLES:
    raise ValueError(f'unknown table {name!r}; expected one of {sorted(TABLES)}')
  return TABLES[name]


def _text_ok(v: Any) -> bool:
  """A string SQLite can store: valid Unicode (JSON's \\ud800 escapes decode to lone surrogates,
  which UTF-8 cannot encode)."""
  try:
    v.encode('utf-8')
    return True
  except UnicodeEncodeError:
    return False


def _int64(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and -2 ** 63 <= v < 2 ** 63


def _check_type(field: str, tag: str, value: Any) -> None:
  if isinstance(value, str) and not _text_ok(value):
    raise RecordError(f'field {field!r} is not valid Unicode (a lone surrogate)')
  ok = {
      _STR: lambda v: isinstance(v, str),
      _INT: _int64,
      _NUM: lambda v: ((_int64(v) or isinstance(v, float)) and not isinstance(v, bool)
                       and math.isfinite(v)),
      _DICT: lambda v: isinstance(v, dict),
      _HASH: lambda v: (isinstance(v, str) and len(v) == 64
                        and all(c in '0123456789abcdef' for c in v)),
  }[tag](value)
  if not ok:
    what = {_STR: 'a string', _INT: 'a 64-bit integer',
            _NUM: 'a finite number (an integer within 64 bits)', _DICT: 'an object',
            _HASH: 'a 64-char hex SHA-256 hash'}[tag]
    raise RecordError(f'field {field!r} must be {what}, got {type(value).__name__} {value!r:.60}')


class RecordStore:
  """SQLite-backed store for samples, scores, generations, preferences and feedback.

  Open with a path (created with the current schema if missing); use as a context manager or
  call `close()`. One store per process and per thread (see the module docstring).
  """

  def __init__(self, path: str | os.PathLike, *, busy_timeout_s: float = 30.0,
               max_retries: int = 8, read_only: bool | None = None, check: bool = True):
    """`read_only` None: read-only when the file or its directory is not writable (a read-only
    mount); a read-only store reads and refuses writes with RecordError. `check`: run SQLite's
    quick integrity check on open and refuse a damaged file (RecordError)."""
    self.path = os.fspath(path)
    self._max_retries = max_retries
    directory = os.path.dirname(os.path.abspath(self.path))
    exists = os.path.exists(self.path)
    if read_only is None:
      read_only = exists and not (os.access(self.path, os.W_OK)
                                  and os.access(directory, os.W_OK))
    self.read_only = read_only
    if read_only and not exists:
      raise RecordError(f'{self.path}: no such record store to open read-only')
    # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves, so the write lock is
    # taken up front (no deadlocking read->write upgrades between processes).
    try:
      if read_only:  # immutable: nothing (not even WAL's -shm file) is written next to it
        immutable = '&immutable=1' if not os.access(directory, os.W_OK) else ''
        self._conn = sqlite3.connect(f'file:{self.path}?mode=ro{immutable}', uri=True,
                                     timeout=busy_timeout_s, isolation_level=None)
      else:
        self._conn = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None)
    except sqlite3.Error as e:
      raise RecordError(f'{self.path}: cannot open the record store ({e})') from None
    try:
      self._conn.execute('PRAGMA busy_timeout = %d' % int(busy_timeout_s * 1000))
      self._conn.execute('PRAGMA foreign_keys = ON')
      if check and exists:
        self._check_integrity()
      if not read_only:
        self._retry(lambda: self._conn.execute('PRAGMA journal_mode = WAL').fetchone())
        # NORMAL is durable across application crashes in WAL mode, without an fsync a commit.
        self._conn.execute('PRAGMA synchronous = NORMAL')
        self._migrate()
      elif self.schema_version != SCHEMA_VERSION:
        raise RecordError(f'{self.path}: read-only store with schema version '
                          f'{self.schema_version}, this code reads {SCHEMA_VERSION}; open it '
                          'writable once to upgrade it')
      self._salt = self._conn.execute(
          "SELECT value FROM store_meta WHERE key = 'id_salt'").fetchone()[0]
    except sqlite3.DatabaseError as e:
      self._conn.close()
      raise RecordError(f'{self.path}: not a readable record store ({e}); restore it from a '
                        'backup') from None
    except BaseException:
      self._conn.close()
      raise

  def _check_integrity(self) -> None:
    problems = [r[0] for r in self._conn.execute('PRAGMA quick_check').fetchall()]
    if problems != ['ok']:
      raise RecordError(f'{self.path}: damaged record store (SQLite quick_check: '
                        f'{problems[0][:120]}{"; ..." if len(problems) > 1 else ""}); restore '
                        'it from a backup, or salvage its rows with the sqlite3 shell\'s .recover')

  # -- lifecycle ---------------------------------------------------------------------------

  def close(self) -> None:
    self._conn.close()

  def __enter__(self) -> 'RecordStore':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  @property
  def schema_version(self) -> int:
    return self._conn.execute('PRAGMA user_version').fetchone()[0]

  def _migrate(self) -> None:
    """Brings the file to SCHEMA_VERSION. Runs in one BEGIN IMMEDIATE transaction, so of several
    processes opening a new file at once exactly one creates the schema (and the id salt)."""
    def run(conn):
      version = conn.execute('PRAGMA user_version').fetchone()[0]
      if version > SCHEMA_VERSION:
        raise RuntimeError(f'{self.path}: schema version {version} is newer than this code '
                           f'({SCHEMA_VERSION}); upgrade genlab')
      for statements in MIGRATIONS[version:]:
        for sql in statements:
          conn.execute(sql)
      if version < SCHEMA_VERSION:
        conn.execute("INSERT OR IGNORE INTO store_meta (key, value) VALUES ('id_salt', ?)",
                     (secrets.token_hex(16),))
        # PRAGMA takes no parameters; the value is an int computed here, never user input.
        conn.execute('PRAGMA user_version = %d' % int(SCHEMA_VERSION))
    if self._conn.execute('PRAGMA user_version').fetchone()[0] != SCHEMA_VERSION:
      self._write(run)

  # -- transactions ------------------------------------------------------------------------

  def _retry(self, fn: Callable[[], Any]) -> Any:
    """Calls fn, retrying 'database is locked/busy' with jittered exponential backoff (on top of
    busy_timeout, which does not cover every case, e.g. switching journal mode)."""
    for attempt in range(self._max_retries + 1):
      try:
        return fn()
      except sqlite3.OperationalError as e:
        if not _is_busy(e) or attempt == self._max_retries:
          raise
        time.sleep(min(2.0, 0.02 * 2 ** attempt) * (0.5 + random.random()))

  def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
    """Runs fn(conn) inside one write transaction, all or nothing; retried whole when locked."""
    if self.read_only:
      raise RecordError(f'{self.path}: the store is open read-only (a read-only file or '
                        'directory, or read_only=True); open a writable copy to add records')

    def attempt():
      self._conn.execute('BEGIN IMMEDIATE')
      try:
        result = fn(self._conn)
        self._conn.execute('COMMIT')
        return result
      except BaseException:
        if self._conn.in_transaction:
          self._conn.execute('ROLLBACK')
        raise
    return self._retry(attempt)

  # -- rows --------------------------------------------------------------------------------

  def hash_id(self, raw_id: str) -> str:
    """Salted SHA-256 of a labeler/user id; only this ever reaches the database."""
    if not isinstance(raw_id, str) or not raw_id:
      raise RecordError(f'ids to hash must be non-empty strings, got {raw_id!r:.60}')
    return hashlib.sha256((self._salt + '\x00' + raw_id).encode('utf-8')).hexdigest()

  def _normalize(self, table: str, record: dict, *, from_import: bool = False) -> dict:
    """Validates a record against the whitelist and returns the row to insert (ids hashed,
    metadata JSON-encoded, defaults and created_at filled in)."""
    spec = _table(table)
    if not isinstance(record, dict):
      raise RecordError(f'record must be a JSON object, got {type(record).__name__}')
    record = {k: v for k, v in record.items() if v is not None}
    row = {}
    raw_field = spec.raw_id[0] if spec.raw_id else None
    unknown = set(record) - set(spec.columns) - ({raw_field} if raw_field else set())
    if unknown:
      raise RecordError(f'unknown field(s) {sorted(unknown)} for table {table!r}')
    if raw_field and raw_field in record:
      row[spec.raw_id[1]] = self.hash_id(record.pop(raw_field))
      record.pop(spec.raw_id[1], None)
    if from_import and not spec.keep_id:
      record.pop('id', None)   # ids are per-store; a fresh one avoids collisions on merge
    for field in spec.required:
      if field not in record and field not in spec.defaults:
        raise RecordError(f'missing required field {field!r}')
    for field, tag in spec.columns.items():
      if field in record:
        _check_type(field, tag, record[field])
        row[field] = record[field]
    for field, value in spec.defaults.items():
      row.setdefault(field, value)
    if 'source' in spec.columns and row['source'] not in SOURCES:
      raise RecordError(f"source must be one of {list(SOURCES)}, got {row['source']!r:.60}")
    if 'metadata' in row:
      row['metadata'] = json.dumps(row['metadata'], sort_keys=True)
    row.setdefault('created_at', _now())
    return row

  @staticmethod
  def _insert(conn: sqlite3.Connection, table: str, row: dict) -> int:
    cols = list(row)   # keys were checked against TABLES[table].columns by _normalize
    sql = 'INSERT INTO %s (%s) VALUES (%s)' % (table, ', '.join(cols),
                                                ', '.join('?' * len(cols)))
    return conn.execute(sql, [row[c] for c in cols]).lastrowid

  def _add(self, table: str, record: dict) -> int:
    row = self._normalize(table, record)
    return self._write(lambda conn: self._insert(conn, table, row))

  def _add_many(self, table: str, records: Iterable[dict]) -> list[int]:
    rows = [self._normalize(table, r) for r in records]   # validate all before writing any
    return self._write(lambda conn: [self._insert(conn, table, r) for r in rows])

  def add_sample(self, kind: str, *, content: str | None = None, path: str | None = None,
                 run: str | None = None, step: int | None = None,
                 metadata: dict | None = None, created_at: str | None = None) -> int:
    """A generated sample ('image', 'text', ...): inline content or a path to a file."""
    return self._add('samples', dict(kind=kind, content=content, path=path, run=run, step=step,
                                     metadata=metadata, created_at=created_at))

  def add_score(self, sample_id: int, metric: str, value: float, *,
                created_at: str | None = None) -> int:
    return self._add('scores', dict(sample_id=sample_id, metric=metric, value=value,
                                    created_at=created_at))

  def add_generation(self, prompt: str, response: str, *, model: str | None = None,
                     run: str | None = None, source: str = 'model',
                     metadata: dict | None = None, created_at: str | None = None) -> int:
    return self._add('generations', dict(prompt=prompt, response=response, model=model, run=run,
                                         source=source, metadata=metadata,
                                         created_at=created_at))

  def add_preference(self, prompt: str, chosen: str, rejected: str, *, source: str,
                     labeler_id: str | None = None, score: float | None = None,
                     metadata: dict | None = None, created_at: str | None = None) -> int:
    """One preference pair. `labeler_id` is stored only as its salted hash."""
    return self._add('preferences', dict(prompt=prompt, chosen=chosen, rejected=rejected,
                                         source=source, labeler_id=labeler_id, score=score,
                                         metadata=metadata, created_at=created_at))

  def add_preferences(self, records: Iterable[dict]) -> list[int]:
    """Many pairs (dicts with add_preference's arguments) in one transaction: all or none."""
    return self._add_many('preferences', records)

  def add_feedback(self, target_type: str, target_id: str | int, *,
                   user_id: str | None = None, rating: float | None = None,
                   comment: str | None = None, source: str = 'human',
                   metadata: dict | None = None, created_at: str | None = None) -> int:
    """Feedback on a sample/generation/...; `user_id` is stored only as its salted hash."""
    return self._add('feedback', dict(target_type=target_type, target_id=str(target_id),
                                      user_id=user_id, rating=rating, comment=comment,
                                      source=source, metadata=metadata, created_at=created_at))

  # -- queries -----------------------------------------------------------------------------

  def _select(self, table: str, filters: dict | None = None, limit: int | None = None,
              conn: sqlite3.Connection | None = None) -> list[dict]:
    spec = _table(table)
    filters = {k: v for k, v in (filters or {}).items() if v is not None}
    for k in filters:
      if k not in spec.columns:
        raise ValueError(f'cannot filter {table!r} on {k!r}')
    sql = 'SELECT %s FROM %s' % (', '.join(spec.columns), table)
    params: list[Any] = [filters[k] for k in filters]
    if filters:
      sql += ' WHERE ' + ' AND '.join(f'{k} = ?' for k in filters)
    sql += ' ORDER BY id'
    if limit is not None:
      sql += ' LIMIT ?'
      params.append(int(limit))
    out = []
    for values in (conn or self._conn).execute(sql, params):
      row = dict(zip(spec.columns, values))
      if row.get('metadata') is not None:
        row['metadata'] = json.loads(row['metadata'])
      out.append(row)
    return out

  def preferences(self, source: str | None = None, limit: int | None = None) -> list[dict]:
    if source is not None and source not in SOURCES:
      raise RecordError(f'source must be one of {list(SOURCES)}, got {source!r}')
    return self._select('preferences', {'source': source}, limit)

  def samples(self, run: str | None = None, kind: str | None = None,
              limit: int | None = None) -> list[dict]:
    return self._select('samples', {'run': run, 'kind': kind}, limit)

  def scores(self, sample_id: int | None = None, metric: str | None = None) -> list[dict]:
    return self._select('scores', {'sample_id': sample_id, 'metric': metric})

  def generations(self, source: str | None = None, run: str | None = None,
                  limit: int | None = None) -> list[dict]:
    return self._select('generations', {'source': source, 'run': run}, limit)

  def feedback(self, target_type: str | None = None, target_id: str | int | None = None,
               limit: int | None = None) -> list[dict]:
    tid = None if target_id is None else str(target_id)
    return self._select('feedback', {'target_type': target_type, 'target_id': tid}, limit)

  def count(self, table: str, source: str | None = None) -> int:
    spec = _table(table)
    if source is None:
      return self._conn.execute('SELECT COUNT(*) FROM %s' % table).fetchone()[0]
    if 'source' not in spec.columns:
      raise ValueError(f'table {table!r} has no source column')
    return self._conn.execute('SELECT COUNT(*) FROM %s WHERE source = ?' % table,
                              (source,)).fetchone()[0]

  # -- JSONL -------------------------------------------------------------------------------

  def export_jsonl(self, table: str, path: str | os.PathLike, source: str | None = None) -> int:
    """Writes one JSON object per row (ids hashed as stored) and returns the row count. The
    file is written to a temporary name and renamed, so readers never see half a file."""
    filters = {'source': source} if source is not None else {}
    rows = self._select(table, filters)
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix='.tmp')
    try:
      with os.fdopen(fd, 'w', encoding='utf-8') as f:
        for row in rows:
          f.write(json.dumps({k: v for k, v in row.items() if v is not None},
                             ensure_ascii=False, sort_keys=True) + '\n')
      os.replace(tmp, path)
    except BaseException:
      if os.path.exists(tmp):
        os.unlink(tmp)
      raise
    return len(rows)

  def import_jsonl(self, table: str, path: str | os.PathLike) -> ImportReport:
    """Imports one JSON object per line into `table`, in one transaction.

    Lines that are not valid UTF-8/JSON, lack required fields, have wrong types or a bad
    `source`, or violate a constraint (e.g. a score for a missing sample) are skipped and
    reported with their 1-based line number; every other line is imported. Blank lines are
    ignored. Raw `labeler_id`/`user_id` fields are hashed; `id` is dropped (new ids are
    assigned) except for samples, whose ids scores refer to.
    """
    _table(table)
    with open(path, 'rb') as f:
      lines = f.read().split(b'\n')
    report = ImportReport()
    rows: list[tuple[int, dict]] = []
    for number, raw in enumerate(lines, start=1):
      if not raw.strip():
        continue
      try:
        record = json.loads(raw.decode('utf-8'))
      except UnicodeDecodeError as e:
        report.skipped.append((number, f'not UTF-8: {e}'))
        continue
      except json.JSONDecodeError as e:
        report.skipped.append((number, f'invalid JSON: {e}'))
        continue
      try:
        rows.append((number, self._normalize(table, record, from_import=True)))
      except RecordError as e:
        report.skipped.append((number, str(e)))

    def insert_all(conn):
      imported, failed = 0, []
      for number, row in rows:
        try:   # a constraint failure undoes only that statement, not the transaction
          self._insert(conn, table, row)
          imported += 1
        except sqlite3.IntegrityError as e:
          failed.append((number, f'constraint failed: {e}'))
      return imported, failed

    report.imported, failed = self._write(insert_all)
    report.skipped = sorted(report.skipped + failed)
    return report
