"""Two gloo ranks, each measuring its shard: every rank gets the same records, equal to one
process holding all the data."""

import json

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from models import make_problem
from track_worker import EVERY, SIZES, STEPS, run, tracked_run

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")


def test_two_ranks_get_the_same_records_as_one_process(tmp_path):
    shards = ((0, 1, 2), (3,))
    mp.spawn(run, args=(2, str(tmp_path / "init"), str(tmp_path), shards), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # bitwise, timings included (rank 0's)
    assert [r["step"] for r in ranks[0]] == list(range(EVERY, STEPS + 1, EVERY))
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == len(ranks[0])  # rank 0 only
    _, _, data = make_problem("mlp_tanh", "ce", sizes=SIZES)
    single = tracked_run(data)
    for got, want in zip(ranks[0], single):
        for key in ("eigenvalues", "layer_eigenvalues", "trace", "gradient_norm"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-9, err_msg=key)
        assert got["n_matvecs"] == want["n_matvecs"]
