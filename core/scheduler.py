"""The ready set: which batch a worker sends next (CONTRACT §6).

Every batch waiting to be sent (or, in offload mode, submitted) has one
entry in Redis, in its company's *lane* of its job's class, scored by the
time it is due. ``pop`` hands out the next runnable entry:

1. transactional work of any company before bulk work;
2. within a class, the company that has been served the fewest recipients
   (start-time fair queueing, i.e. deficit round-robin by recipients): one
   company's 250 batches cannot starve another's single batch, and two equal
   campaigns progress together. A company whose lane was empty starts at
   the least-served active company's count, so an idle spell earns no credit;
3. within a lane, by due time.

A company whose shared send rate has no tokens left is *blocked* until it
has (``core.delivery.limits`` sets the mark): its entries are not runnable, so no
worker picks work it would only wait on.

Entries hold ids and counts only. The database stays the truth: the sweep
re-adds any waiting batch whose entry is missing (``contains``), and the
claims (``core.delivery.claims``) decide who sends, so a duplicate entry is harmless.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from core.models import PRIORITIES, Priority

PREFIX = "offload:sched"
CLASSES = tuple(str(p) for p in PRIORITIES)  # the order of service
DIRECT, SUBMIT = "d", "s"                   # entry kinds: send here, or submit to the company's cloud queue
SUBMIT_GROUP = 10                           # offload submissions: up to 10 batches per queue call


def lane_key(klass: str, company_id: int | str) -> str:
    return f"{PREFIX}:lane:{klass}:{company_id}"


def block_key(company_id: int | str) -> str:
    return f"{PREFIX}:block:{company_id}"


def member(kind: str, batch_id: int) -> str:
    return f"{kind}:{batch_id:012d}"  # zero-padded: equal due times keep batch order


@dataclass(frozen=True)
class Entry:
    klass: str
    company_id: int
    batch_id: int
    cost: int            # recipients left in the batch
    kind: str = DIRECT
    due: float = 0.0     # unix seconds; 0 = now


@dataclass(frozen=True)
class Picked:
    klass: str
    company_id: int
    kind: str
    batch_ids: list[int]


_ADD = """
local prefix, klass, company = ARGV[1], ARGV[2], ARGV[3]
local lane = prefix .. ':lane:' .. klass .. ':' .. company
local active = prefix .. ':active:' .. klass
local served = prefix .. ':served:' .. klass
if redis.call('ZCARD', lane) == 0 then
  local least = nil
  for _, c in ipairs(redis.call('SMEMBERS', active)) do
    if c ~= company and redis.call('ZCARD', prefix .. ':lane:' .. klass .. ':' .. c) > 0 then
      local v = tonumber(redis.call('HGET', served, c) or '0')
      if least == nil or v < least then least = v end
    end
  end
  local mine = tonumber(redis.call('HGET', served, company) or '0')
  if least ~= nil and least > mine then redis.call('HSET', served, company, tostring(least)) end
end
for i = 4, #ARGV, 3 do
  redis.call('ZADD', lane, ARGV[i + 1], ARGV[i])
  redis.call('HSET', prefix .. ':cost', ARGV[i], ARGV[i + 2])
end
redis.call('SADD', active, company)
return 1
"""

# ARGV: prefix, now_ms, peek (0|1), exclude company ('' for none), group size; KEYS unused (single Redis)
_POP = """
local prefix, now, peek, exclude, group = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1', ARGV[4], tonumber(ARGV[5])
local earliest = nil
for _, klass in ipairs({'transactional', 'bulk'}) do
  local active = prefix .. ':active:' .. klass
  local served = prefix .. ':served:' .. klass
  local best, best_v, best_m = nil, nil, nil
  for _, c in ipairs(redis.call('SMEMBERS', active)) do
    local lane = prefix .. ':lane:' .. klass .. ':' .. c
    local first = redis.call('ZRANGE', lane, 0, 0, 'WITHSCORES')
    if #first == 0 then
      if not peek then redis.call('SREM', active, c) end
    elseif c ~= exclude then
      local ready = math.max(tonumber(first[2]), tonumber(redis.call('GET', prefix .. ':block:' .. c) or '0'))
      if ready <= now then
        local v = tonumber(redis.call('HGET', served, c) or '0')
        if best == nil or v < best_v then best, best_v, best_m = c, v, first[1] end
      elseif earliest == nil or ready < earliest then
        earliest = ready
      end
    end
  end
  if best ~= nil then
    if peek then return {1, klass, best, best_m} end
    local lane = prefix .. ':lane:' .. klass .. ':' .. best
    local taken = {best_m}
    if string.sub(best_m, 1, 1) == 's' then
      for _, m in ipairs(redis.call('ZRANGEBYSCORE', lane, '-inf', now, 'LIMIT', 0, group)) do
        if #taken < group and m ~= best_m and string.sub(m, 1, 1) == 's' then table.insert(taken, m) end
      end
    end
    local cost = 0
    for _, m in ipairs(taken) do
      redis.call('ZREM', lane, m)
      cost = cost + tonumber(redis.call('HGET', prefix .. ':cost', m) or '1')
      redis.call('HDEL', prefix .. ':cost', m)
    end
    redis.call('HINCRBYFLOAT', served, best, cost)
    if redis.call('ZCARD', lane) == 0 then redis.call('SREM', active, best) end
    local out = {1, klass, best}
    for _, m in ipairs(taken) do table.insert(out, m) end
    return out
  end
end
if earliest == nil then return {0} end
return {0, tostring(earliest)}
"""

_scripts: dict[tuple[int, str], object] = {}


def _script(conn: redis.Redis, source: str):
    key = (id(conn), source)
    script = _scripts.get(key)
    if script is None:
        script = _scripts[key] = conn.register_script(source)
    return script


def now_ms() -> int:
    return int(time.time() * 1000)


def add(conn: redis.Redis, entries: list[Entry]) -> None:
    """Put entries in their lanes (an entry already there gets the new due time)."""
    by_lane: dict[tuple[str, int], list[Entry]] = {}
    for e in entries:
        by_lane.setdefault((e.klass, e.company_id), []).append(e)
    script = _script(conn, _ADD)
    pipe = conn.pipeline(transaction=False)
    for (klass, company_id), group in by_lane.items():
        args: list[str | int] = [PREFIX, klass, str(company_id)]
        for e in group:
            args += [member(e.kind, e.batch_id), int(e.due * 1000) if e.due else now_ms(), max(1, int(e.cost))]
        script(args=args, client=pipe)
    pipe.execute()


def _decode(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def pop(conn: redis.Redis, group: int = SUBMIT_GROUP) -> Picked | float | None:
    """Take the next runnable entry (an offload submission takes up to ``group``
    of its lane's due submissions along). Nothing runnable: the unix time the
    first entry becomes runnable, or ``None`` when the ready set is empty."""
    out = _script(conn, _POP)(args=[PREFIX, now_ms(), 0, "", group])
    if int(out[0]) == 0:
        return float(_decode(out[1])) / 1000 if len(out) > 1 else None
    members = [_decode(m) for m in out[3:]]
    return Picked(_decode(out[1]), int(_decode(out[2])), members[0][0], [int(m[2:]) for m in members])


def runnable(conn: redis.Redis, exclude_company: int | None = None) -> bool:
    """True when some entry (of another company than ``exclude_company``) could run now."""
    out = _script(conn, _POP)(args=[PREFIX, now_ms(), 1, "" if exclude_company is None else str(exclude_company),
                                    SUBMIT_GROUP])
    return int(out[0]) == 1


def contains(conn: redis.Redis, klass: str, company_id: int, batch_id: int) -> bool:
    """True when the batch has an entry (either kind) in its lane."""
    pipe = conn.pipeline(transaction=False)
    for kind in (DIRECT, SUBMIT):
        pipe.zscore(lane_key(klass, company_id), member(kind, batch_id))
    return any(score is not None for score in pipe.execute())


def lane_sizes(conn: redis.Redis, company_id: int) -> dict[str, int]:
    """Entries waiting in each of the company's lanes."""
    pipe = conn.pipeline(transaction=False)
    for klass in CLASSES:
        pipe.zcard(lane_key(klass, company_id))
    return dict(zip(CLASSES, pipe.execute(), strict=True))


def class_depths(conn: redis.Redis) -> dict[str, int]:
    """Entries waiting in the ready set per service class, every company summed (``/metrics``)."""
    depths = {}
    for klass in CLASSES:
        keys = list(conn.scan_iter(match=lane_key(klass, "*"), count=500))
        pipe = conn.pipeline(transaction=False)
        for key in keys:
            pipe.zcard(key)
        depths[klass] = sum(pipe.execute()) if keys else 0
    return depths


def blocked_until(conn: redis.Redis, company_id: int) -> float | None:
    """When the company's shared rate has tokens again (unix s), if it is out of them now."""
    raw = conn.get(block_key(company_id))
    if raw is None:
        return None
    until = float(_decode(raw)) / 1000
    return until if until > time.time() else None


def klass_of(priority: str | None) -> str:
    return str(Priority.BULK) if priority == Priority.BULK else str(Priority.TRANSACTIONAL)
