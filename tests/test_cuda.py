"""The CUDA paths against the CPU ones: training steps, the capture and the model's label
distribution give the same numbers on a GPU as on the CPU (float32, TF32 off).  Skipped where
no GPU is visible (CI has none); run on a GPU machine with ``python -m pytest tests/test_cuda.py``."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device visible", allow_module_level=True)

from simkernel import icl_eval, make_world  # noqa: E402
from simkernel import model as model_mod  # noqa: E402
from simkernel import runs  # noqa: E402
from simkernel import train as tr  # noqa: E402
from simkernel.alignment import examples_from_prompts  # noqa: E402
from simkernel.capture import capture  # noqa: E402
from simkernel.device import resolve_device  # noqa: E402
from simkernel.prompts import collate  # noqa: E402
from simkernel.sampling import sample_prompts  # noqa: E402
from simkernel.sampling import write_corpus  # noqa: E402


@pytest.fixture(autouse=True)
def _exact_float32():
    # TF32 would make the GPU's matrix products differ from the CPU's by ~1e-3
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _train(root, device):
    world = make_world("ginc-small", 0)
    root.mkdir(parents=True, exist_ok=True)
    corpus = write_corpus(world, root / "corpus", 16, 256, seed=0)
    cfg = tr.TrainConfig(corpus=tr.corpus_identity(corpus), model="tiny", block_size=64, batch_size=8,
                         lr=3e-3, warmup_steps=2, max_steps=6, eval_every=3, eval_docs=4, eval_blocks=8,
                         ckpt_every=100, device=device)
    d = tr.prepare_run_dir(root / "runs", cfg, {"command": "train", "train": cfg.hashed(), "corpus_dir": str(corpus)})
    tr.train(cfg, corpus, d)
    return d, world


def test_auto_resolves_to_cuda():
    assert resolve_device("auto").startswith("cuda")


def test_training_on_cuda_follows_the_cpu_run(tmp_path):
    """Same seed, same batches: the losses of a few steps agree to float32 round-off."""
    cpu_dir, _ = _train(tmp_path / "cpu", "cpu")
    gpu_dir, _ = _train(tmp_path / "gpu", "cuda")
    cpu = [r["val_loss"] for r in runs.read_metrics(cpu_dir)]
    gpu = [r["val_loss"] for r in runs.read_metrics(gpu_dir)]
    assert len(cpu) == len(gpu) >= 2
    np.testing.assert_allclose(gpu, cpu, rtol=2e-3)
    assert gpu[-1] < gpu[0]


def test_capture_and_label_distribution_match_the_cpu(tmp_path):
    run_dir, world = _train(tmp_path, "cuda")
    model_dir, _ = icl_eval.run_paths(run_dir)
    prompts = sample_prompts(world, 12, 6, 3, seed=1)
    labels = np.asarray(world.labels)
    out = {}
    for dev in ("cpu", "cuda"):
        model = model_mod.load_model(model_dir, device=dev).eval()
        batch = collate(examples_from_prompts(world, prompts), list(labels), pad_id=0)
        cap = capture(model, batch, offsets=[-1, 0, 1], batch_size=5)
        q = icl_eval.model_predictive(model, prompts.tokens, labels, device=dev, batch_size=5)
        out[dev] = (cap, q)
    (c0, q0), (c1, q1) = out["cpu"], out["cuda"]
    np.testing.assert_allclose(q1, q0, atol=1e-5)
    np.testing.assert_allclose(c1.attn, c0.attn, atol=1e-5)
    np.testing.assert_allclose(c1.label_logp, c0.label_logp, atol=1e-4)
    np.testing.assert_allclose(c1.keys, c0.keys, atol=1e-4)
