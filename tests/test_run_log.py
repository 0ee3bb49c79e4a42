"""moe_jax/run_log.py in-process: the TensorBoard events it writes itself (since issue 28, 1)
read back as TensorBoard reads them, and how metrics.jsonl lines cut short are handled."""
import json
import struct

import pytest
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.record_writer import masked_crc32c

from moe_jax.run_log import RunLog, read_metrics


def read_events(path) -> list[Event]:
  """The records of a TFRecord events file, their checksums checked."""
  data, events, i = path.read_bytes(), [], 0
  while i < len(data):
    header = data[i:i + 8]
    (length,) = struct.unpack("Q", header)
    assert struct.unpack("I", data[i + 8:i + 12])[0] == masked_crc32c(header)
    body = data[i + 12:i + 12 + length]
    assert struct.unpack("I", data[i + 12 + length:i + 16 + length])[0] == masked_crc32c(body)
    events.append(Event.FromString(body))
    i += 16 + length
  return events


def test_events_hold_every_scalar_with_the_purge_marker(tmp_path):
  log = RunLog(tmp_path, start_step=0, total_steps=3, progress=False)
  for step in (1, 2, 3):
    log.write(step, {"loss": 2.0 / step, "layer0/expert_load": [0.5, 0.5]})
  log.close()
  log = RunLog(tmp_path, start_step=2, total_steps=4, progress=False)   # a resume from 2
  log.write(3, {"loss": 0.7})
  log.close()
  files = sorted((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  events = [e for f in files for e in read_events(f)]
  starts = [e.step for e in events if e.session_log.status == SessionLog.START]
  assert starts == [1, 3]
  # One per start (both starts may share a file: same second; it is appended to, not emptied).
  assert sum(e.file_version == "brain.Event:2" for e in events) == 2
  scalars = [(e.step, v.tag, round(v.simple_value, 6)) for e in events for v in e.summary.value]
  assert scalars == [(1, "loss", 2.0), (2, "loss", 1.0), (3, "loss", 0.666667), (3, "loss", 0.7)]
  assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_a_write_error_names_the_tensorboard_directory(tmp_path):
  log = RunLog(tmp_path, start_step=0, total_steps=3, progress=False)
  log._tb._file.close()
  log._tb._file = open("/dev/full", "wb")       # every write: ENOSPC
  with pytest.raises(OSError, match=rf"could not write TensorBoard events to "
                                    rf"{tmp_path}/tensorboard \(No space left on device\)"):
    log.write(1, {"loss": 1.0})
  log.close()                                    # already reported: no second error


@pytest.mark.parametrize("tail, note", [
    ('{"step": 3, "loss": 0.', True),              # torn: dropped, said
    ('{"step": 3, "loss": 0.5}', False),           # complete but unterminated: kept
    ("\0\0\0\0", True)])                           # a page of zeros after a crash
def test_a_torn_last_line_is_left_out_and_abandoned_on_resume(tmp_path, capsys, tail, note):
  lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2)]
  (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + tail)
  kept = [1, 2] if note else [1, 2, 3]
  assert [r["step"] for r in read_metrics(tmp_path)] == kept
  RunLog(tmp_path, start_step=3, total_steps=4, progress=False, tensorboard=False).close()
  assert ("was cut short" in capsys.readouterr().err) == note
  assert (tmp_path / "metrics.jsonl").read_text() == "".join(
      line + "\n" for line in lines + ([] if note else [tail]))
  assert (tmp_path / "metrics.abandoned.jsonl").exists() == note


def test_a_corrupt_line_elsewhere_names_the_file_and_the_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
  with pytest.raises(ValueError, match=rf"^{path}, line 2, is corrupt \(Unterminated string "
                                       r"starting at: column 13\); remove or repair"):
    read_metrics(tmp_path)
  path.write_text('{"step": 1}\n[1, 2]\n')
  with pytest.raises(ValueError, match=r"line 2, is corrupt \(not a record with a step\)"):
    read_metrics(tmp_path)
