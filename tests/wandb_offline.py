"""Read an offline W&B run (``wandb/offline-run-*/run-<id>.wandb``) without the network: its run record (project,
group, job type, tags), its config and the last logged value of every key, as a dashboard's summary shows it.

The file is a LevelDB-style log (W&B's ``datastore``): a 7-byte header, then 32 KiB blocks of records
``crc32 (4) | length (2, little-endian) | type (1) | data``, where type 1 is a full record and 2/3/4 the first,
middle and last pieces of one split across blocks; each record is a ``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

HEADER, BLOCK, RECORD_HEADER = 7, 32 * 1024, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> Iterator[pb.Record]:
    """Every record of a ``.wandb`` file, in order."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + RECORD_HEADER <= len(data):
        if BLOCK - pos % BLOCK < RECORD_HEADER:  # block trailer too short for a header: skip to the next block
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos: pos + RECORD_HEADER])
        chunk = data[pos + RECORD_HEADER: pos + RECORD_HEADER + length]
        pos += RECORD_HEADER + length
        if kind not in (FULL, FIRST, MIDDLE, LAST):
            continue
        pending += chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(run_dir: str | Path) -> dict:
    """``{"project", "group", "job_type", "tags", "name", "config", "summary", "history_keys"}`` of one offline run."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    run, config, summary = None, {}, {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            config.update({_key(i): json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            summary.update({_key(i): json.loads(i.value_json) for i in record.history.item})
    assert run is not None, f"{path} holds no run record"
    return {"project": run.project, "group": run.run_group, "job_type": run.job_type, "tags": list(run.tags),
            "name": run.display_name, "config": config, "summary": summary}
