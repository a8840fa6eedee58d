"""fastdc.deepcluster.distribution in one process: a world of one, where every shard is all
the data and every sum over the group is the identity (the group's side is covered by
tests/test_train_distributed.py)."""

import numpy as np
import torch

from fastdc.deepcluster.distribution import Distribution
from fastdc.deepcluster.seeds import STREAM_RANK, derive_seed

CPU = torch.device("cpu")


def test_one_process_is_a_world_of_one():
    d = Distribution(None, CPU)
    assert (d.rank, d.world, d.main, d.distributed) == (0, 1, True, False)
    assert d.rank_seed(7) == 7 and d.rank_seed(7) != derive_seed(7, STREAM_RANK, 0)
    assert d.rank_name("features") == "features"
    assert d.shard(10) is None
    order = np.arange(11)
    assert d.my_part(order) is order
    ok = np.array([True, False, True])
    np.testing.assert_array_equal(d.gather_mask(ok), ok)
    labels = torch.arange(5)
    assert torch.equal(d.gather_rows(labels), labels)
    assert d.agreed_stop(True) and not d.agreed_stop(False)
    loss = 0.1 + 0.2  # no rounding on the way through the float64 tensor
    assert d.sum_step(loss, 3, False) == (loss, 3, False, [])
    assert d.sum_step(0.0, 0, True) == (0.0, 0, True, [])
    assert d.sum_step(loss, 3, False, [1.5, 0.25]) == (loss, 3, False, [1.5, 0.25])


def test_one_process_trains_the_model_itself():
    d = Distribution(None, CPU)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert d.prepare_model(model, sync_bn=True) is model
    assert d.wrap(model) is model
    before = [b.clone() for b in model.buffers()]
    d.sync_buffers(model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))
