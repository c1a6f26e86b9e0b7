"""Record store: round trips, hashed ids, the source CHECK, JSONL import/export (malformed lines
reported by line number) and four processes writing concurrently without losing a row."""
import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from research import records
from research.records import RecordError, RecordStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pair(i, source='human', **kw):
  return dict(prompt=f'p{i}', chosen=f'good{i}', rejected=f'bad{i}', source=source, **kw)


def test_schema_wal_and_version(tmp_path):
  path = tmp_path / 'r.db'
  with RecordStore(path) as store:
    assert store.schema_version == records.SCHEMA_VERSION >= 1
  with sqlite3.connect(path) as conn:
    assert conn.execute('PRAGMA journal_mode').fetchone()[0] == 'wal'
    assert conn.execute('PRAGMA user_version').fetchone()[0] == records.SCHEMA_VERSION
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
  assert set(records.TABLES) | {'store_meta'} <= tables
  with RecordStore(path) as store:   # reopening keeps the schema, salt and version
    assert store.schema_version == records.SCHEMA_VERSION


def test_newer_schema_is_refused(tmp_path):
  path = tmp_path / 'r.db'
  RecordStore(path).close()
  with sqlite3.connect(path) as conn:
    conn.execute('PRAGMA user_version = %d' % (records.SCHEMA_VERSION + 1))
  with pytest.raises(RuntimeError, match='newer'):
    RecordStore(path)


def test_round_trips(tmp_path):
  with RecordStore(tmp_path / 'r.db') as store:
    sid = store.add_sample('image', path='samples/0.png', run='vae', step=10,
                           metadata={'seed': 3})
    store.add_sample('text', content='hello', run='lm', step=1)
    store.add_score(sid, 'fid', 12.5)
    gid = store.add_generation('2+2?', '4', model='lm-small', run='lm', source='model')
    store.add_feedback('generation', gid, user_id='alice', rating=4.0, comment='ok')
    pid = store.add_preference('q', 'a', 'b', source='human', labeler_id='bob', score=0.7,
                               metadata={'batch': 1})
    store.add_preferences([_pair(i, source='synthetic') for i in range(3)])

    [s] = store.samples(run='vae')
    assert (s['id'], s['kind'], s['path'], s['step'], s['metadata']) == (
        sid, 'image', 'samples/0.png', 10, {'seed': 3})
    assert [r['value'] for r in store.scores(sample_id=sid, metric='fid')] == [12.5]
    [g] = store.generations(source='model')
    assert (g['prompt'], g['response'], g['model']) == ('2+2?', '4', 'lm-small')
    [f] = store.feedback('generation', gid)
    assert f['user_hash'] == store.hash_id('alice') and f['rating'] == 4.0
    human = store.preferences(source='human')
    assert [p['id'] for p in human] == [pid]
    assert human[0]['labeler_hash'] == store.hash_id('bob') != store.hash_id('bobby')
    assert (human[0]['score'], human[0]['metadata']) == (0.7, {'batch': 1})
    assert [p['prompt'] for p in store.preferences(source='synthetic', limit=2)] == ['p0', 'p1']
    assert store.count('preferences') == 4 and store.count('preferences', source='synthetic') == 3
    assert store.count('samples') == 2
    with pytest.raises(ValueError, match='unknown table'):
      store.count('sqlite_master; DROP TABLE samples')


def test_add_preferences_is_all_or_nothing(tmp_path):
  with RecordStore(tmp_path / 'r.db') as store:
    with pytest.raises(RecordError, match='missing required field .rejected.'):
      store.add_preferences([_pair(0), {'prompt': 'p', 'chosen': 'c', 'source': 'human'}])
    assert store.count('preferences') == 0


def test_labeler_ids_are_only_stored_hashed(tmp_path):
  path = tmp_path / 'r.db'
  raw_ids = ['labeler-7f3e-secret@example.com', 'user-91c2-private']
  with RecordStore(path) as store:
    store.add_preference('q', 'a', 'b', source='human', labeler_id=raw_ids[0])
    store.add_feedback('sample', 1, user_id=raw_ids[1], rating=1.0)
    jl = tmp_path / 'in.jsonl'
    jl.write_text(json.dumps({**_pair(9), 'labeler_id': raw_ids[0]}) + '\n')
    assert store.import_jsonl('preferences', jl).imported == 1
    assert store.preferences()[0]['labeler_hash'] == store.preferences()[1]['labeler_hash']
  data = b''.join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith('r.db'))
  for raw in raw_ids:
    assert raw.encode() not in data
  # Another store has another salt, so the same person hashes differently there.
  with RecordStore(tmp_path / 'other.db') as other, RecordStore(path) as store:
    assert other.hash_id(raw_ids[0]) != store.hash_id(raw_ids[0])


def test_source_check_rejects_bad_values(tmp_path):
  path = tmp_path / 'r.db'
  with RecordStore(path) as store:
    with pytest.raises(RecordError, match=r"source must be one of \['human', 'synthetic', "
                                          r"'model'\], got 'crowd'"):
      store.add_preference('q', 'a', 'b', source='crowd')
    with pytest.raises(RecordError, match='source must be one of'):
      store.add_generation('q', 'r', source='HUMAN')
    assert store.count('preferences') == 0
  # The database itself enforces it too, for writers that bypass RecordStore.
  with sqlite3.connect(path) as conn, pytest.raises(sqlite3.IntegrityError, match='CHECK'):
    conn.execute("INSERT INTO preferences (prompt, chosen, rejected, source, created_at) "
                 "VALUES ('q', 'a', 'b', 'crowd', 'now')")


def test_export_import_round_trip(tmp_path):
  with RecordStore(tmp_path / 'a.db') as a:
    a.add_preferences([_pair(i, source=('human', 'synthetic', 'model')[i % 3],
                             labeler_id=f'l{i % 2}', metadata={'i': i}) for i in range(6)])
    sid = a.add_sample('text', content='x')
    a.add_score(sid, 'len', 1.0)
    assert a.export_jsonl('preferences', tmp_path / 'p.jsonl') == 6
    assert a.export_jsonl('preferences', tmp_path / 'syn.jsonl', source='synthetic') == 2
    a.export_jsonl('samples', tmp_path / 's.jsonl')
    a.export_jsonl('scores', tmp_path / 'sc.jsonl')
    original = a.preferences()
  with RecordStore(tmp_path / 'b.db') as b:
    assert b.import_jsonl('preferences', tmp_path / 'p.jsonl').imported == 6
    assert b.import_jsonl('samples', tmp_path / 's.jsonl').imported == 1
    assert b.import_jsonl('scores', tmp_path / 'sc.jsonl').imported == 1   # sample id kept
    assert b.preferences() == original
    assert b.scores(sample_id=sid)[0]['value'] == 1.0
    report = b.import_jsonl('preferences', tmp_path / 'syn.jsonl')   # merge: new ids
    assert (report.imported, report.skipped) == (2, [])
    assert b.count('preferences', source='synthetic') == 4


def test_malformed_jsonl_lines_are_reported_and_skipped(tmp_path):
  lines = [json.dumps(_pair(i)) for i in range(1, 11)]
  lines[2] = '{"prompt": "p3", "chosen": '                                       # bad JSON
  lines[4] = json.dumps({'prompt': 'p5', 'chosen': 'c', 'source': 'human'})      # no rejected
  lines[6] = json.dumps(_pair(7, source='crowd'))                               # bad source
  path = tmp_path / 'in.jsonl'
  path.write_text('\n'.join(lines) + '\n\n')
  with RecordStore(tmp_path / 'r.db') as store:
    report = store.import_jsonl('preferences', path)
    assert report.imported == 7
    assert [n for n, _ in report.skipped] == [3, 5, 7]
    reasons = dict(report.skipped)
    assert 'invalid JSON' in reasons[3]
    assert "missing required field 'rejected'" in reasons[5]
    assert "source must be one of" in reasons[7] and 'crowd' in reasons[7]
    assert [p['prompt'] for p in store.preferences()] == [
        'p1', 'p2', 'p4', 'p6', 'p8', 'p9', 'p10']


def test_import_reports_constraint_failures(tmp_path):
  path = tmp_path / 'sc.jsonl'
  path.write_text(json.dumps({'sample_id': 1, 'metric': 'fid', 'value': 1.0}) + '\n'
                  + json.dumps({'sample_id': 999, 'metric': 'fid', 'value': 2.0}) + '\n'
                  + json.dumps({'sample_id': 1, 'metric': 'fid', 'value': 'high'}) + '\n')
  with RecordStore(tmp_path / 'r.db') as store:
    store.add_sample('text', content='x')
    report = store.import_jsonl('scores', path)
    assert report.imported == 1
    assert [n for n, _ in report.skipped] == [2, 3]
    assert 'FOREIGN KEY' in report.skipped[0][1] and 'number' in report.skipped[1][1]


def test_every_malformed_line_kind_is_skipped_alone(tmp_path):
  """A lone surrogate, an integer beyond 64 bits, a non-finite score and non-UTF-8 bytes each
  skip their own line; the good lines still import."""
  lines = [json.dumps(_pair(i)).encode() for i in range(1, 7)]
  lines[1] = b'{"prompt": "p2 \\ud800", "chosen": "c", "rejected": "r", "source": "human"}'
  lines[2] = json.dumps(_pair(3, score=10 ** 30)).encode()
  lines[3] = b'{"prompt": "p4", "chosen": "c", "rejected": "r", "source": "human", "score": NaN}'
  lines[4] = b'{"prompt": "p5 \xff", "chosen": "c", "rejected": "r", "source": "human"}'
  path = tmp_path / 'in.jsonl'
  path.write_bytes(b'\n'.join(lines) + b'\n')
  with RecordStore(tmp_path / 'r.db') as store:
    report = store.import_jsonl('preferences', path)
    reasons = dict(report.skipped)
    assert report.imported == 2 and sorted(reasons) == [2, 3, 4, 5], report
    assert 'lone surrogate' in reasons[2] and 'within 64 bits' in reasons[3]
    assert 'finite' in reasons[4] and 'not UTF-8' in reasons[5]
    assert [p['prompt'] for p in store.preferences()] == ['p1', 'p6']
    # The same bad values through the API are the store's own error, not an encoder's.
    with pytest.raises(RecordError, match='lone surrogate'):
      store.add_generation('p \ud800', 'r', source='model')
    with pytest.raises(RecordError, match='64 bits'):
      store.add_preference('p', 'c', 'r', source='human', score=10 ** 30)


def test_a_read_only_store_reads_and_refuses_writes(tmp_path, monkeypatch):
  db = tmp_path / 'r.db'
  with RecordStore(db) as store:
    store.add_preferences([_pair(1), _pair(2)])
  before = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}
  # A read-only mount (root ignores permission bits, so the test stands it in for os.access):
  # opened read-only and immutable, nothing written next to it, not even WAL's -shm file.
  monkeypatch.setattr(records.os, 'access', lambda path, mode: not mode & os.W_OK)
  with RecordStore(db) as store:
    assert store.read_only and [p['prompt'] for p in store.preferences()] == ['p1', 'p2']
    with pytest.raises(RecordError, match='open read-only'):
      store.add_preference('p', 'c', 'r', source='human')
  assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == before
  with pytest.raises(RecordError, match='no such record store'):
    RecordStore(tmp_path / 'missing.db', read_only=True)


def test_a_damaged_store_is_refused_on_open(tmp_path):
  db = tmp_path / 'r.db'
  with RecordStore(db) as store:
    store.add_preferences([_pair(i, metadata={'pad': 'x' * 300}) for i in range(200)])
    store._conn.execute('PRAGMA wal_checkpoint(TRUNCATE)')
  data = bytearray(db.read_bytes())
  page = 4096
  assert len(data) > 20 * page
  data[10 * page: 11 * page] = os.urandom(page)   # one page of the table's b-tree overwritten
  db.write_bytes(bytes(data))
  with pytest.raises(RecordError, match='damaged record store|not a readable record store'):
    RecordStore(db)
  (tmp_path / 'junk.db').write_bytes(b'not a database at all' * 100)
  with pytest.raises(RecordError, match='not a readable record store'):
    RecordStore(tmp_path / 'junk.db')


_WRITER = r'''
import os, sys, time
sys.path.insert(0, sys.argv[1])
from research.records import RecordStore
db, worker, go = sys.argv[2], int(sys.argv[3]), sys.argv[4]
while not os.path.exists(go):
  time.sleep(0.005)
with RecordStore(db) as store:   # all four may race to create the schema
  for start in range(0, 200, 5):   # 40 small transactions of 5 rows
    store.add_preferences([dict(prompt=f'w{worker}-{i}', chosen='c', rejected='r',
                                source='synthetic', labeler_id=f'worker{worker}')
                           for i in range(start, start + 5)])
'''


@pytest.mark.timeout(60)
def test_four_processes_write_concurrently_without_losing_rows(tmp_path):
  db, go = str(tmp_path / 'shared.db'), str(tmp_path / 'go')
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  procs = [subprocess.Popen([sys.executable, '-c', _WRITER, REPO, db, str(w), go], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for w in range(4)]
  time.sleep(0.2)   # let the interpreters start, then release them together
  open(go, 'w').close()
  for p in procs:
    out, err = p.communicate(timeout=50)
    assert p.returncode == 0, err.decode()
  with RecordStore(db) as store:
    rows = store.preferences()
    assert store.count('preferences') == len(rows) == 800
    assert len({r['id'] for r in rows}) == 800
    assert {r['prompt'] for r in rows} == {f'w{w}-{i}' for w in range(4) for i in range(200)}
    assert len({r['labeler_hash'] for r in rows}) == 4
