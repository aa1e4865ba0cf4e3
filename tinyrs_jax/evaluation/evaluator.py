"""The evaluation run (`config.trainer = "eval"`, configs/eval.py): greedy answers to every configured benchmark,
scored under both rule sets (rules.py), aggregated (metrics.py), written with pictures (pictures.py).

    python -m tinyrs_jax.main --config=configs/eval.py[:demo] --workdir=DIR --config.init.workdir=RUN

For each benchmark, in config order:
  1. its records are read (suite.py entry -> a reader), filtered by question type, given the prompt template and
     cut to the limit; every process reads the same records;
  2. global batches of prompts in file order (each process its rows; bad records become padding rows, counted)
     are answered by the generation engine, greedy, sharded over the mesh like training (one prefill per
     prompt, decode until every row stopped);
  3. every process's tokens are gathered and decoded and every row scored (each process holds the same rows);
     process 0 appends them to DIR/predictions/<benchmark>.jsonl, then records how many records are done
     (DIR/predictions/<benchmark>.progress.json), so a killed run resumes at the next batch, with the same
     batches. A record the pipeline could not use (unreadable image, prompt over data.max_length) gets a row
     with skipped=true and an empty output: a miss under strict, not counted under tinyrs (the original would
     have stopped on it);
  4. results.json / results.md get the benchmark's metrics (recomputable from the predictions file alone), and
     DIR/pictures its confusion matrix (classification) and grounding grid (best and worst).
A benchmark already in results.json with the same fingerprints (results.py: the answers' — checkpoint and the
step loaded, reader entry, the records' contents, generation settings, image and length limits — and the
scores' — rules.SCORING_VERSION and the scoring settings) is not recomputed; when only the scores' changed and
the predictions file is complete, its saved answers are re-scored without generating. Process 0 decides what is
skipped, re-scored or resumed and tells the others, so hosts never disagree about the batches.
Prompts (eval.prompt_style): `tinyrs` gives every record whose original wording is known the original work's
prompt (suite.original_prompt); `ours` keeps the readers' prompts. results.json records which one ran.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from tinyrs_jax import sharding as sharding_lib
from tinyrs_jax.evaluation import metrics as metrics_lib
from tinyrs_jax.evaluation import results as results_lib
from tinyrs_jax.evaluation import rules
from tinyrs_jax.sampling.answers import Sampler
from tinyrs_jax.sampling.completions import eos_ids
from tinyrs_jax.train import input as input_lib
from tinyrs_jax.train import metrics as train_metrics
from tinyrs_jax import runtime

RESULTS_JSON, RESULTS_MD = results_lib.RESULTS_JSON, results_lib.RESULTS_MD
PREDICTIONS, PICTURES = "predictions", "pictures"
READER_OPTIONS = ("split", "image_dir", "data_dir", "prefix")


# ------------------------------------------------------------------------------------------- benchmarks

def selected(config) -> list[tuple[str, dict]]:
  """(name, entry) of the benchmarks to run: named in eval.run (all when empty) and with a path."""
  wanted = [n.strip() for n in str(config.eval.get("run", "")).split(",") if n.strip()]
  known = list(config.benchmarks.keys())
  unknown = [n for n in wanted if n not in known]
  if unknown:
    raise ValueError(f"eval.run names unknown benchmarks {unknown}; known: {known}")
  out = []
  for name in (wanted or known):
    b = dict(config.benchmarks[name])
    if not b.get("path"):
      if wanted:
        raise ValueError(f"benchmark {name!r} has no files: set --config.benchmarks.{name}.path=...")
      continue
    out.append((name, b))
  if not out:
    raise ValueError("no benchmark to run: set --config.benchmarks.<name>.path for at least one of "
                     f"{known} (see tinyrs_jax/evaluation/suite.py)")
  return out


def load_benchmark(name: str, b: dict, default_prompt: str, default_limit: int, prompt_style: str = "ours"):
  """The benchmark's records, in file order, ready for prompting; and the reader's SkipCounter. prompt_style
  `tinyrs` puts the original work's prompt where a record carries its raw question (suite.original_prompt)."""
  from tinyrs_jax.evaluation import suite
  from tinyrs_jax.data import readers
  from tinyrs_jax.data.records import TASKS, SkipCounter
  fmt = b["format"]
  if fmt not in readers.READERS:
    raise ValueError(f"benchmark {name}: unknown format {fmt!r}; known: {readers.reader_names()}")
  params = inspect.signature(readers.READERS[fmt]).parameters
  options = {k: b[k] for k in READER_OPTIONS if b.get(k) and k in params}
  if "require_assistant" in params:
    options["require_assistant"] = False  # prompts with their answers as fields are what evaluation needs
  if b.get("task") and "task" in params:
    options["task"] = b["task"]
  skips = SkipCounter(name=f"benchmark {name}")
  records = readers.load_records(fmt, b["path"], skips=skips, **options)
  types = {t.strip() for t in str(b.get("question_types", "")).split(",") if t.strip()}
  if types:
    records = [r for r in records if str(r.extra.get("question_type", "")) in types]
  task = b.get("task") or ""
  if task and task not in TASKS:
    raise ValueError(f"benchmark {name}: task {task!r} is not one of {sorted(TASKS)}")
  template = b.get("prompt") or default_prompt
  if "{question}" not in template:
    raise ValueError(f"benchmark {name}: the prompt template {template!r} has no {{question}}")
  out = []
  if prompt_style not in suite.PROMPT_STYLES:
    raise ValueError(f"eval.prompt_style must be one of {suite.PROMPT_STYLES}, got {prompt_style!r}")
  for r in records:
    messages = [dict(m) for m in r.prompt_messages]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    original = suite.original_prompt(task or r.task, r.extra) if prompt_style == "tinyrs" else None
    question = messages[last_user]["content"] if original is None else original
    messages[last_user]["content"] = template.replace("{question}", question)
    out.append(dataclasses.replace(r, messages=messages, task=task or r.task,
                                   extra={**r.extra, "reference_text": _assistant_text(r)}))
  limit = int(b.get("limit", -1))
  limit = limit if limit >= 0 else int(default_limit)
  return (out[:limit] if limit >= 0 else out), skips


def _assistant_text(record) -> str | None:
  turns = [m["content"] for m in record.messages if m["role"] == "assistant"]
  return turns[-1] if turns else None


def example_of(record) -> dict:
  """What the rules score against (the pipeline's per-row metadata form), built from the record."""
  size = record.image_size
  if size is None and record.task == "ground" and record.image is not None:
    from tinyrs_jax.data import images as images_lib
    size = images_lib.image_size(record.image, name=str(record.id))
  return {"id": record.id, "task": record.task, "answer": record.answer,
          "boxes": [{"label": label, "box": list(box)} for label, box in record.boxes],
          "width": size[0] if size else None, "height": size[1] if size else None, "extra": dict(record.extra)}


def prediction_row(index: int, record, output: str, length: int, truncated: bool, score_kw: dict) -> dict:
  example = example_of(record)
  extra = record.extra
  qtypes = extra.get("question_types", extra.get("question_type", extra.get("type")))
  prompt = next(m["content"] for m in reversed(record.messages) if m["role"] == "user")
  row = {"index": index, "id": record.id, "task": record.task,
         "question_types": [str(t) for t in qtypes] if isinstance(qtypes, list) else
         ([str(qtypes)] if qtypes not in (None, "") else []),
         "prompt": prompt, "output": output, "length": int(length), "truncated": bool(truncated),
         "reference": record.answer}
  if record.task == "caption":
    refs = extra.get("references") or ([extra["reference_text"]] if extra.get("reference_text") else [])
    row["references"] = [str(x) for x in refs]
  if record.task in ("ground", "ground_multi"):  # the image size the boxes were scaled to (pixels)
    row["image_size"] = [example["width"], example["height"]]
  if record.task == "ground" and "unique" in extra:  # VRSBench's unique / non-unique split
    row["unique"] = str(extra["unique"]).strip().lower() in ("true", "1", "yes")
  row.update(rules.score(output, example, **score_kw))
  return row


def skipped_row(index: int, record, score_kw: dict) -> dict:
  """The row of a record the pipeline could not use: an empty answer, a miss under strict, unscored under tinyrs."""
  try:
    row = prediction_row(index, record, "", 0, False, score_kw)
  except (ValueError, OSError):  # its image header is unreadable too
    row = prediction_row(index, dataclasses.replace(record, image_size=(1, 1)), "", 0, False, score_kw)
  row.update(skipped=True, correct_tinyrs=None)
  if row.get("task") == "ground":
    row["iou_tinyrs"] = None
  return row


def rescore_rows(rows: list[dict], records, score_kw: dict) -> list[dict]:
  """A complete predictions file's rows scored again from their saved outputs (no generation): what a change of
  the scoring code or settings alone needs."""
  out = []
  for row in rows:
    record = records[row["index"]]
    if row.get("skipped"):
      new = skipped_row(row["index"], record, score_kw)
    else:
      new = prediction_row(row["index"], record, row["output"], row["length"], row["truncated"], score_kw)
    for key in ("option_logprobs",):
      if key in row:
        new[key] = row[key]
    out.append(new)
  return out


# ---------------------------------------------------------------------------------------- the evaluation

class Evaluator:
  """Greedy answers on the mesh (sampling/answers.py's Sampler, the path GRPO's rollout and held-out evaluation
  take too), scored into prediction rows: the eval run's engine, also used inside training runs (TrainingEval) on
  their validation records."""

  def __init__(self, config, model, mesh, processor, *, tokenizer_dir: str, batch_size: int, max_new_tokens: int,
               answer_tag: str = "answer", think_tags: str = "think,reasoning", box_format: str = "qwen1000",
               log_every_s: float = 30.0, mc_mode: str = "generate"):
    if mc_mode not in ("generate", "loglik"):
      raise ValueError(f"eval.mc_mode must be generate or loglik, got {mc_mode!r}")
    self.config, self.model, self.mesh, self.processor = config, model, mesh, processor
    self.mc_mode, self._score_options = mc_mode, None
    self.batch_size, self.max_new = int(batch_size), int(max_new_tokens)
    self.sampler = Sampler(model, mesh, tokenizer_dir=tokenizer_dir, max_new_tokens=self.max_new,
                           eos_ids=eos_ids(tokenizer_dir, model.cfg.eos_token_id))
    self.completions, self.pad_id = self.sampler.completions, self.sampler.pad_id
    self.score_kw = dict(answer_tag=answer_tag, box_format=box_format,
                         think_tags=tuple(t.strip() for t in str(think_tags).split(",") if t.strip()))
    self.log_every_s = float(log_every_s)

  @classmethod
  def from_eval_config(cls, config, model, mesh, processor, tokenizer_dir: str) -> "Evaluator":
    e = config.eval
    return cls(config, model, mesh, processor, tokenizer_dir=tokenizer_dir, batch_size=e.batch_size,
               max_new_tokens=e.max_new_tokens, answer_tag=e.answer_tag, think_tags=e.think_tags,
               box_format=e.box_format, log_every_s=e.get("log_every_s", 30.0), mc_mode=e.get("mc_mode", "generate"))

  def batches(self, records):
    from tinyrs_jax.data import pipeline
    it = pipeline.make_dataset(records, self.processor, global_batch_size=self.batch_size, seed=0, mode="prompt",
                               num_epochs=1, shuffle=False, process_index=jax.process_index(),
                               process_count=jax.process_count(), bad_rows="pad", drop_remainder=False,
                               **input_lib.pipeline_kwargs(self.config))
    yield from it
    if hasattr(it, "close"):
      it.close()

  # ------------------------------------------------------------------- multiple choice by log-likelihood

  def option_tokens(self, records) -> tuple[list[list[list[int]]], int, int]:
    """Each record's options as token lists; K (most options) and the option width (a multiple of 8), fixed
    for the whole benchmark so one compilation serves every batch."""
    tok = self.completions.tokenizer
    options = [[tok.encode(str(c)) for c in (r.extra.get("choices") or [])] for r in records]
    k = max((len(o) for o in options), default=0)
    width = max((len(t) for o in options for t in o), default=1)
    return options, max(k, 1), -(-width // 8) * 8

  def option_scores(self, params, host_batch: dict, options, k: int, width: int) -> np.ndarray:
    """(global rows, K) mean log-probability per token of each option's text after the prompt (-inf where a
    row has fewer options), by the training forward (temperature 1, the prompt's image shared by its K rows)."""
    from tinyrs_jax.train import losses as losses_lib
    from tinyrs_jax.train import state as state_lib
    static = self.sampler.prompt_batch(host_batch)
    rows = len(host_batch["meta"])
    ids = np.full((rows * k, width), self.pad_id, np.int32)
    mask = np.zeros((rows * k, width), np.int32)
    for r, m in enumerate(host_batch["meta"]):
      i = m.get("record_index")
      for j, t in enumerate(options[i] if i is not None else []):
        t = t[:width]
        ids[r * k + j, :len(t)] = t
        mask[r * k + j, :len(t)] = 1
    batch = {"prompt_ids": static["input_ids"], "prompt_mask": static["attention_mask"],
             "pixel_values": static["pixel_values"], "image_grid_thw": static["image_grid_thw"],
             "completion_ids": ids, "completion_mask": mask}
    if self._score_options is None:
      model, chunk = self.model, int(self.config.loss.get("chunk_size", 256))
      fn = lambda p, b: losses_lib.completion_logprobs(model.merge(p), b, temperature=1.0, chunk_size=chunk)
      self._score_options = state_lib.CompiledStep(
          fn, self.mesh, self.model.param_shardings(self.mesh), donate=False, name="option_logprobs",
          out_shardings=sharding_lib.named_sharding(self.mesh, ("batch", None)), log=logging.info)
    logps = sharding_lib.global_to_host(self._score_options(params, input_lib.place_batch(batch, self.mesh)))
    n = mask.sum(axis=1)
    mean = np.where(n > 0, (np.asarray(logps) * mask).sum(axis=1) / np.maximum(n, 1), -np.inf)
    return sharding_lib.gather_rows(mean.reshape(rows, k))

  def answer_records(self, params, records, *, first_index: int = 0, on_batch=None, name: str = "eval"):
    """Prediction rows of `records` (indices from first_index), batch by batch: on_batch(rows, records_done)
    after each (process 0 writes there); returns all rows (on every process)."""
    t0, last_log, done, all_rows = time.time(), time.time(), 0, []
    total = len(records)
    loglik = self.mc_mode == "loglik" and any(r.task == "mc" for r in records)
    if loglik and not all(r.task == "mc" for r in records):
      raise ValueError(f"{name}: eval.mc_mode=loglik scores multiple-choice benchmarks only; this one mixes "
                       f"{sorted({r.task for r in records})}")
    if loglik:
      options, k, width = self.option_tokens(records)
    for host_batch in self.batches(records):
      index = np.asarray([m["record_index"] if m.get("record_index") is not None else -1
                          for m in host_batch["meta"]], np.int64)
      if loglik:  # the option with the highest mean log-probability is the answer; no generation
        scores = self.option_scores(params, host_batch, options, k, width)
        texts = [chr(ord("A") + int(np.argmax(s_))) for s_ in scores]
        lengths, truncated = np.zeros(len(texts), np.int32), np.zeros(len(texts), bool)
      else:
        texts, lengths, truncated = self.sampler.greedy_answers(params, host_batch, every_process=True)
      index = sharding_lib.gather_rows(index)
      rows = [prediction_row(first_index + int(i), records[int(i)], texts[r], lengths[r], truncated[r],
                             self.score_kw) for r, i in enumerate(index) if i >= 0]
      if loglik:
        for row, r in zip(rows, [r for r, i in enumerate(index) if i >= 0]):
          row["option_logprobs"] = [float(x) for x in scores[r][:len(options[row["index"] - first_index])]]
      seen = {row["index"] for row in rows}
      for i in range(done, min(done + self.batch_size, total)):  # records the pipeline could not use
        if first_index + i not in seen:
          rows.append(skipped_row(first_index + i, records[i], self.score_kw))
      rows.sort(key=lambda row: row["index"])
      done = min(done + self.batch_size, total)
      all_rows += rows
      if on_batch is not None:
        on_batch(rows, first_index + done)
      now = time.time()
      if now - last_log >= self.log_every_s or done == total:
        rate = done / max(now - t0, 1e-9)
        logging.info("eval %s: %d/%d examples (%.0f%%), %.2f examples/s, ETA %s", name, first_index + done,
                     first_index + total, 100.0 * done / max(total, 1), rate,
                     train_metrics.format_eta((total - done) / max(rate, 1e-9)))
        last_log = now
    return all_rows


# ----------------------------------------------------------------------------------------------- files

_write_json, read_results, write_results = results_lib.write_json, results_lib.read_results, results_lib.write_results
resume_point = results_lib.resume_point


IDENTITY_EXCLUDED = ("run", "log_every_s", "pictures", "picture_examples")  # eval fields that change no number


def loaded_step(source: runtime.ModelSource, config) -> int | None:
  """The checkpoint step an init.workdir source resolves to (its latest when none is named)."""
  from tinyrs_jax.checkpoint import orbax_io
  if source.init != "workdir":
    return None
  workdir, step = orbax_io.find_checkpoint(source.init_path)
  if step is None:
    wanted = int(config.init.get("step", -1))
    step = wanted if wanted >= 0 else orbax_io.latest_step(workdir)
  return step


def fingerprint(name: str, b: dict, config, source: runtime.ModelSource, records) -> str:
  """What decides a benchmark's answers (results.py); the scores' own is results.scoring_fingerprint."""
  d = config.data
  excluded = IDENTITY_EXCLUDED + results_lib.SCORING_FIELDS
  key = {"benchmark": name, "entry": b, "records": len(records), "contents": results_lib.records_digest(records),
         "checkpoint": [source.init, source.init_path, loaded_step(source, config)],
         "eval": {k: v for k, v in config.eval.to_dict().items() if k not in excluded},
         "data": [d.min_pixels, d.max_pixels, d.max_length, list(d.length_buckets), list(d.patch_buckets)],
         "model": [config.model.dtype, int(config.seed)]}
  return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _agree(values: list[int]) -> list[int]:
  """Process 0's values, on every process."""
  if jax.process_count() == 1:
    return values
  from jax.experimental import multihost_utils
  return [int(v) for v in multihost_utils.broadcast_one_to_all(np.asarray(values, np.int64))]


# ------------------------------------------------------------------------------------------------- run

def demo_assets(config) -> str | None:
  """data.demo: the synthetic data set (built once, cached) is the `synthetic` benchmark's default files (its
  data.demo_split split, "val" unless set: plain questions, every task; captions from pretraining's file of that
  split) and its tokenizer the default; returns the tokenizer folder."""
  if not config.data.get("demo", False):
    return None
  from tinyrs_jax.data import synthetic
  from tinyrs_jax.data.demo_tokenizer import ensure_demo_assets
  split = config.data.get("demo_split", "val") or "val"
  if split not in synthetic.SPLITS:
    raise ValueError(f"data.demo_split={split!r}; use one of {list(synthetic.SPLITS)}")
  data_dir, tok = ensure_demo_assets(None, int(config.data.get("demo_examples", 2000)), 0)
  if not config.benchmarks.synthetic.path:
    config.benchmarks.synthetic.path = os.path.join(data_dir, "instruct", f"{split}.jsonl")
  if not config.benchmarks.synthetic_caption.path:
    config.benchmarks.synthetic_caption.path = os.path.join(data_dir, "pretrain", f"{split}.jsonl")
  return tok


def _source_and_model(config, workdir: str):
  from tinyrs_jax.models.qwen2_vl import as_dtype
  from tinyrs_jax.checkpoint import orbax_io
  if orbax_io.latest_step(workdir) is not None:
    raise ValueError(f"--workdir={workdir} holds training checkpoints: evaluate them with "
                     f"--config.init.workdir={workdir} and write the evaluation to another --workdir")
  spec_tok = config.data.get("tokenizer_dir") or demo_assets(config)
  source = runtime.resolve_model(config, workdir, spec_tok)
  if not source.tokenizer_dir:
    raise ValueError("evaluation decodes answers: it needs a tokenizer (data.tokenizer_dir or the checkpoint's)")
  model = runtime.configured_model(config, source)
  dtype = jnp.dtype(as_dtype(model.kwargs["dtype"]))
  return source, model, dtype


def eval_processor(config, tokenizer_dir: str):
  from tinyrs_jax.data.processor import Processor
  d = config.data
  return Processor.from_folder(tokenizer_dir, min_pixels=int(d.min_pixels) or None,
                               max_pixels=int(d.max_pixels) or None)


def train_and_evaluate(config, workdir: str) -> dict:
  """Evaluates the configured checkpoint on the selected benchmarks into `workdir`; returns the results."""
  t_start = time.time()
  demo_assets(config)
  benches = selected(config)  # config mistakes fail before the model loads
  source, model, dtype = _source_and_model(config, workdir)
  mesh = runtime.make_mesh(config)
  input_lib.check_batch_split(int(config.eval.batch_size), mesh.shape["data"] * mesh.shape["fsdp"],
                              jax.process_count(), "eval.batch_size")
  main = jax.process_index() == 0
  os.makedirs(os.path.join(workdir, PREDICTIONS), exist_ok=True)
  params = runtime.load_frozen_params(config, source, model, model.param_shardings(mesh), dtype)
  logging.info("evaluating %s (%s) on %s", source.init_path or "random init", source.init,
               [n for n, _ in benches])
  evaluator = Evaluator.from_eval_config(config, model, mesh, eval_processor(config, source.tokenizer_dir),
                                        source.tokenizer_dir)
  results = read_results(workdir) if main else {}
  for name, b in benches:
    style = str(config.eval.get("prompt_style", "ours"))
    records, skips = load_benchmark(name, b, config.eval.prompt, int(config.eval.limit), style)
    if any(r.task == "caption" for r in records) and not _has_caption_scorers():
      raise ImportError(f"{name} has captions, scored with pycocoevalcap: pip install -e \".[eval]\"")
    fp = fingerprint(name, b, config, source, records)
    score_fp = results_lib.scoring_fingerprint(config.eval)
    pred_path = os.path.join(workdir, PREDICTIONS, f"{name}.jsonl")
    progress_path = os.path.join(workdir, PREDICTIONS, f"{name}.progress.json")
    same_answers = main and results.get(name, {}).get("fingerprint") == fp
    finished = same_answers and results[name].get("scoring") == score_fp
    rescore = (not finished and same_answers
               and results_lib.complete(pred_path, progress_path, fp, len(records)))
    start = resume_point(pred_path, progress_path, fp) if main and not (finished or rescore) else 0
    finished, rescore, start = _agree([int(finished), int(rescore), start])
    if finished:
      logging.info("eval %s: already in %s (same checkpoint and settings), not recomputed", name, RESULTS_JSON)
      continue
    t0 = time.time()
    if rescore:
      logging.info("eval %s: the scoring changed (rules.SCORING_VERSION or its settings): re-scoring the saved "
                   "predictions, no generation", name)
      rows = rescore_rows(metrics_lib.read_rows(pred_path), records, evaluator.score_kw) if main else []
      if main:
        results_lib.write_rows(pred_path, rows)
      _finish(config, workdir, results, name, b, records, skips, rows, fp, score_fp, style, source, start=0,
              seconds=time.time() - t0, rescored=True)
      continue
    if start:
      logging.info("eval %s: resuming after %d of %d records", name, start, len(records))
    elif main:
      open(pred_path, "w").close()

    def on_batch(rows, done, pred_path=pred_path, progress_path=progress_path, fp=fp):
      if main:
        with open(pred_path, "a", encoding="utf-8") as f:
          f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
          f.flush()
          os.fsync(f.fileno())
        _write_json(progress_path, {"fingerprint": fp, "records_done": done})
      _debug_kill(config, done)

    evaluator.answer_records(params, records[start:], first_index=start, on_batch=on_batch, name=name)
    rows = metrics_lib.read_rows(pred_path) if main else []
    _finish(config, workdir, results, name, b, records, skips, rows, fp, score_fp, style, source, start=start,
            seconds=time.time() - t0, rescored=False)
  logging.info("evaluation done in %.0fs: %s", time.time() - t_start, os.path.join(workdir, RESULTS_MD))
  return {"results": results, "seconds": time.time() - t_start}


def _finish(config, workdir, results, name, b, records, skips, rows, fp, score_fp, style, source, *, start: int,
            seconds: float, rescored: bool) -> None:
  """The benchmark's results.json entry from its rows (process 0 writes it, its tables and pictures)."""
  from tinyrs_jax.evaluation import pictures, suite
  main = jax.process_index() == 0
  results[name] = {"fingerprint": fp, "scoring": score_fp, "scoring_version": rules.SCORING_VERSION,
                   "prompt_style": style,
                   "original_prompts": sum(suite.original_prompt(r.task, r.extra) is not None for r in records)
                   if style == "tinyrs" else 0,
                   "format": b["format"], "path": b["path"], "records": len(records),
                   "examples": len(rows), "skipped_unusable": sum(bool(r.get("skipped")) for r in rows),
                   "unscored": metrics_lib.unscored(rows), "rescored": rescored,
                   "reader_skips": dict(skips.skipped), "seconds": round(seconds, 1),
                   "examples_per_s": 0.0 if rescored else round((len(records) - start) / max(seconds, 1e-9), 3),
                   "checkpoint": source.init_path or "random init",
                   "metrics": metrics_lib.aggregate(rows) if main else {}}
  if main:
    write_results(workdir, results)
    if config.eval.get("pictures", True):
      pictures.write_pictures(os.path.join(workdir, PICTURES), name, rows, records,
                              int(config.eval.get("picture_examples", 6)))
    _log_metrics(name, results[name])


def _log_metrics(name: str, entry: dict) -> None:
  parts = [f"{k} {v['strict']:.3f}/{v['tinyrs']:.3f}" for k, v in entry["metrics"].items()]
  logging.info("eval %s (%d examples, strict/tinyrs): %s", name, entry["examples"], " | ".join(parts))


def _debug_kill(config, records_done: int) -> None:
  """Tests: SIGKILL this process once `debug_kill_at_step` records are done (a batch boundary)."""
  at = int(config.get("debug_kill_at_step", -1))
  if 0 <= at <= records_done:
    import signal
    logging.warning("debug_kill_at_step=%d: killing the evaluation after %d records", at, records_done)
    os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------------------- inside training

def flat_metrics(m: dict[str, dict], prefix: str = "eval/") -> dict[str, float]:
  """{prefix}strict/<metric> and {prefix}tinyrs/<metric> scalars of aggregate()'s metrics (for metrics.jsonl)."""
  out = {}
  for name, v in m.items():
    for rule in rules.RULE_SETS:
      out[f"{prefix}{rule}/{name.replace('@', '_at_')}"] = float(v[rule])  # TensorBoard refuses '@' in names
  return out


def _has_caption_scorers() -> bool:
  try:
    import pycocoevalcap  # noqa: F401
    return True
  except ImportError:
    return False


class TrainingEval:
  """Inside a training run (config.eval.generate_examples > 0): greedy answers to the first that many records of
  data.val at every evaluation, scored like the eval run: eval/strict/<metric> and eval/tinyrs/<metric> in
  metrics.jsonl, the rows in workdir/eval_predictions/step_<step>.jsonl."""

  def __init__(self, config, data, model, mesh, tokenizer_dir: str, workdir: str, batch_size: int):
    from tinyrs_jax.data import pipeline
    from tinyrs_jax.data.records import SkipCounter
    e = config.eval
    n = int(e.get("generate_examples", 0))
    records = pipeline.load_source(input_lib.reader_spec(config, data.val_path, prompts=True),
                                   SkipCounter(name="generation eval"))[:n]
    self.records = [dataclasses.replace(r, messages=[dict(m) for m in r.prompt_messages],
                                        extra={**r.extra, "reference_text": _assistant_text(r)}) for r in records]
    self.dir = os.path.join(workdir, "eval_predictions")
    self.captions = _has_caption_scorers()
    self.evaluator = Evaluator(config, model, mesh, input_lib.make_processor(config, tokenizer_dir),
                               tokenizer_dir=tokenizer_dir, batch_size=batch_size,
                               max_new_tokens=int(e.get("generate_max_new_tokens", 256)),
                               answer_tag=e.get("answer_tag", "answer"),
                               think_tags=e.get("think_tags", "think,reasoning"),
                               log_every_s=1e9)

  @classmethod
  def maybe(cls, config, data, model, mesh, tokenizer_dir, workdir, batch_size) -> "TrainingEval | None":
    if int(config.eval.get("generate_examples", 0)) <= 0 or not data.val_path:
      return None
    return cls(config, data, model, mesh, tokenizer_dir, workdir, batch_size)

  def __call__(self, params, step: int) -> dict[str, float]:
    t0 = time.time()
    rows = self.evaluator.answer_records(params, self.records, name=f"step {step}")
    if jax.process_index() == 0:
      os.makedirs(self.dir, exist_ok=True)
      with open(os.path.join(self.dir, f"step_{step}.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    m = metrics_lib.aggregate(rows, caption_metrics=self.captions)
    out = flat_metrics(m)
    out["eval/generate_time_s"] = time.time() - t0
    logging.info("eval step %d, %d greedy answers (strict): %s", step, len(rows),
                 " ".join(f"{k} {v['strict']:.3f}" for k, v in m.items()))
    return out


gather_scored_rows = metrics_lib.gather_scored_rows  # the GRPO held-out evaluation's name for it
