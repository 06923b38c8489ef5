"""Helpers shared by the end-to-end tests: running the job, reading its output."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import soundfile as sf
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def job_args(manifest: str, out: str, checkpoint: str, *extra: str) -> list[str]:
    """Arguments of jobs/synthesize.py for a greedy run of the tiny checkpoint."""
    return [
        "jobs/synthesize.py", "--config", "configs/demo.yaml", "--input", manifest, "--output", out,
        "--set", f"model.id={checkpoint}", "--set", "sampling.do_sample=false",
        "--set", "generation.max_audio_seconds=1.2", *extra,
    ]


def run_job(args: list[str], env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a job script with `env` applied to this environment (a None value removes a variable)."""
    full_env = {**os.environ, **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def load_output(out: str):
    """The output through `datasets.load_dataset`, audio left as bytes (no torchcodec)."""
    from datasets import Audio, load_dataset

    ds = load_dataset("parquet", data_dir=os.path.join(out, "data"), split="train")
    assert isinstance(ds.features["audio"], Audio), ds.features
    return ds.cast_column("audio", Audio(decode=False))


def check_audio_rows(ds) -> None:
    """Every clip decodes to 24 kHz mono of num_frames x 1920 samples, codes have num_frames rows."""
    for row in ds:
        samples, rate = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
        assert rate == 24000 and samples.ndim == 1, row["id"]
        assert len(samples) == row["num_frames"] * 1920, row["id"]
        assert np.array(row["codes"]).shape == (row["num_frames"], 32), row["id"]


def reference_codes(checkpoint: str, manifest_path: str, ds) -> dict[str, list]:
    """Codes from calling transformers' generate directly on each output row's inputs."""
    import pyarrow.parquet as pq
    from transformers import AutoProcessor, CsmForConditionalGeneration

    from synth.audio_io import decode_clip

    model = CsmForConditionalGeneration.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    processor.tokenizer.pad_token = processor.tokenizer.eos_token
    scripts = {r["id"]: r for r in pq.read_table(manifest_path).to_pylist()}
    base = os.path.dirname(manifest_path)
    expected = {}
    for row in ds:
        turns = scripts[row["script_id"]]["turns"]
        messages = []
        for j in row["context_turns"]:
            clip = decode_clip(open(os.path.join(base, turns[j]["audio"]), "rb").read(), 24000)
            messages.append({"role": str(int(turns[j]["speaker"])), "content": [
                {"type": "text", "text": turns[j]["text"]}, {"type": "audio", "path": clip}]})
        me = turns[row["turn"]]
        messages.append({"role": str(int(me["speaker"])), "content": [{"type": "text", "text": me["text"]}]})
        inputs = processor.apply_chat_template([messages], tokenize=True, return_dict=True)
        max_frames = json.loads(row["generation"])["max_frames"]
        with torch.inference_mode():
            codes = model.generate(**inputs, max_new_tokens=max_frames, do_sample=False,
                                   depth_decoder_do_sample=False)[0]
        eos = (codes[:, :-1] == model.config.codebook_eos_token_id).all(-1).nonzero()
        expected[row["id"]] = (codes[: int(eos[0, 0])] if len(eos) else codes).tolist()
    return expected
