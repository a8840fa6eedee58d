"""The backend registry: forced backends, errors, automatic choice, fallback log."""

import logging

import pytest
import torch

from fastdc.ops import assign
from fastdc.ops import registry as backends


@pytest.fixture
def fake_op(monkeypatch):
    """A throw-away op 'fake' with torch, cpu (refuses float64) and cuda (device) backends."""
    monkeypatch.setattr(backends, "_IMPLS", dict(backends._IMPLS))
    monkeypatch.setattr(backends, "_LOGGED", set())
    backends.register("fake", "torch")(lambda x: "torch")
    backends.register(
        "fake", "cpu", lambda x: ["cpu runs float32 only"] if x.dtype == torch.float64 else []
    )(lambda x: "cpu")
    backends.register(
        "fake", "cuda", lambda x: [] if x.is_cuda else ["needs tensors on a CUDA device"]
    )(lambda x: "cuda")
    return "fake"


def test_torch_backend_always_available():
    assert "torch" in backends.available("assign")


def test_unknown_backend_is_a_clear_error():
    x = torch.randn(5, 3)
    with pytest.raises(backends.BackendError, match="unknown backend 'nope'"):
        assign(x, x[:2], backend="nope")


def test_automatic_choice_prefers_fast_backend(fake_op):
    assert backends.select(fake_op, x=torch.zeros(2)).backend == "cpu"


def test_forced_backend_that_cannot_run_says_why(fake_op):
    with pytest.raises(backends.BackendError, match="needs tensors on a CUDA device"):
        backends.select(fake_op, "cuda", x=torch.zeros(2))


def test_fallback_is_logged_once(fake_op, caplog):
    x = torch.zeros(2, dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="fastdc"):
        assert backends.select(fake_op, x=x).backend == "torch"
        assert backends.select(fake_op, x=x).backend == "torch"
    messages = [r.getMessage() for r in caplog.records if "float32 only" in r.getMessage()]
    assert len(messages) == 1


def test_select_once_chooses_again_only_when_the_key_changes(fake_op, monkeypatch):
    chosen = []
    real = backends.select
    monkeypatch.setattr(backends, "select",
                        lambda *a, **kw: chosen.append(a) or real(*a, **kw))
    op = backends.SelectOnce(fake_op)
    x32, x64 = torch.zeros(2), torch.zeros(2, dtype=torch.float64)
    assert op(torch.float32, x=x32) == "cpu" and op(torch.float32, x=x32) == "cpu"
    assert len(chosen) == 1
    assert op(torch.float64, x=x64) == "torch" and len(chosen) == 2
    assert op(None, x=x32) == "cpu" and op(None, x=x32) == "cpu" and len(chosen) == 3
    with pytest.raises(backends.BackendError, match="needs tensors on a CUDA device"):
        backends.SelectOnce(fake_op, "cuda")(None, x=x32)


def test_env_variable_forces_backend(fake_op, monkeypatch):
    monkeypatch.setenv("FASTDC_BACKEND", "torch")
    assert backends.select(fake_op, x=torch.zeros(2)).backend == "torch"


def test_backend_without_implementation_is_reported(fake_op):
    with pytest.raises(backends.BackendError, match="not available"):
        backends.select(fake_op, "triton", x=torch.zeros(2))


def test_automatic_choice_on_cpu_never_picks_gpu_backends():
    x = torch.randn(6, 4)
    impl = backends.select(
        "assign", None, x=x[None], centroids=x[None, :2], metric="l2", precision="default"
    )
    assert impl.backend in ("cpu", "torch")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_triton_is_the_automatic_choice_on_cuda():
    if "triton" not in backends.available("assign"):
        pytest.skip("backend 'triton' did not load")
    x = torch.randn(100, 16, device="cuda")
    c = torch.randn(10, 16, device="cuda")
    impl = backends.select("assign", x=x[None], centroids=c[None], metric="l2",
                           precision="default")
    assert impl.backend == "triton"
    _, idx = assign(x, c)
    _, ref_i = assign(x, c, backend="torch")
    assert (idx == ref_i).float().mean() >= 0.99
