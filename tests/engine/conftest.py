"""The local-engine suite: the real vLLM engine (vLLM's CPU build) inside a real ``iir serve``.

Run by ``make test-engine`` in ``.venv-engine`` (packaging/engine-env.sh). Where vLLM is not
installed (``make test``'s ``.venv``) nothing here is collected.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ENGINE = importlib.util.find_spec("vllm") is not None
if not ENGINE:
    collect_ignore_glob = ["*"]

# What vLLM's CPU build needs on these machines (float32: bfloat16 takes an AMX path that the
# kernel has not been asked to allow; a 1 GiB KV cache; no thread pinning on a shared box; one
# OpenMP thread: two spinning threads on two shared cores made every step 2-4x slower).
ENGINE_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}
IIR_ENGINE_ENV = {
    "IIR_VLLM_DTYPE": "float32",
    "IIR_VLLM_ENFORCE_EAGER": "true",
}

# vLLM keeps a cache (model facts) and a config folder under the home directory and its sockets
# in /tmp; the suite leaves nothing behind, so all of them live in a folder removed at the end. Set before any import of
# vLLM (collection imports it), and inherited by every server a test starts.
_VLLM_HOME = tempfile.mkdtemp(prefix="iir-engine-vllm-") if ENGINE else None
if _VLLM_HOME is not None:
    os.environ.update(ENGINE_ENV)
    os.environ["VLLM_CACHE_ROOT"] = os.path.join(_VLLM_HOME, "cache")
    os.environ["VLLM_CONFIG_ROOT"] = os.path.join(_VLLM_HOME, "config")
    # The engine's ZeroMQ sockets (ipc://), left behind by an engine core that was killed.
    os.environ["VLLM_RPC_BASE_PATH"] = _VLLM_HOME


def pytest_unconfigure(config: pytest.Config) -> None:
    if _VLLM_HOME is not None:
        shutil.rmtree(_VLLM_HOME, ignore_errors=True)


@dataclass
class Models:
    """Tiny models built for this run: ``tiny`` (context 256) and ``tiny2`` (context 512, another
    seed), the second kept out of the served model folder until a test drops it in."""

    root: Path
    tiny: Path
    tiny2: Path
    model_dir: Path  # IIR_MODEL_DIR of the served IIR


@pytest.fixture(scope="session")
def models() -> Iterator[Models]:
    from .tiny_model import build

    root = Path(tempfile.mkdtemp(prefix="iir-engine-models-"))
    try:
        tiny = build(root / "tiny", context_length=256, seed=0)
        tiny2 = build(root / "staging" / "tiny2", context_length=512, seed=1)
        model_dir = root / "model-dir"
        model_dir.mkdir()
        yield Models(root, tiny, tiny2, model_dir)
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Reference:
    """The same model run by ``transformers`` in the test process: what greedy output must be."""

    def __init__(self, path: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def prompt_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def greedy(self, messages: list[dict[str, Any]], max_tokens: int) -> list[int]:
        ids = self.prompt_ids(messages)
        with self.torch.no_grad():
            out = self.model.generate(
                self.torch.tensor([ids]),
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return out[0][len(ids) :].tolist()

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def logprobs(self, messages: list[dict[str, Any]], completion: list[int]) -> list[float]:
        """Log-probability of each completion token given everything before it."""
        ids = self.prompt_ids(messages)
        with self.torch.no_grad():
            logits = self.model(self.torch.tensor([ids + completion])).logits[0]
        lp = self.torch.log_softmax(logits.float(), dim=-1)
        start = len(ids) - 1
        return [float(lp[start + i, tok]) for i, tok in enumerate(completion)]


@pytest.fixture(scope="session")
def reference(models: Models) -> Reference:
    return Reference(models.tiny)


@dataclass
class UdpSink:
    """A ``REMOTE_LOG_SINK`` on loopback that keeps every datagram it receives."""

    sock: socket.socket
    lines: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()
        return f"{host}:{port}"

    def run(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            self.lines.append(data.decode(errors="replace"))


@pytest.fixture(scope="session")
def udp_sink() -> Iterator[UdpSink]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sink = UdpSink(sock)
    threading.Thread(target=sink.run, name="udp-sink", daemon=True).start()
    yield sink
    sock.close()
