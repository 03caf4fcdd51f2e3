"""The privileged state (a simulator's, e.g. PushT's block pose) through the loader: normalized,
masked where not recorded, read only when the model reads it out (`model.privileged_dim`)."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines import loader
from tests.converted_fixtures import write_converted_dataset
from tests.test_loader import _config


def test_privileged_state_is_normalized_masked_and_read_only_when_the_model_asks(tmp_path):
    robot = write_converted_dataset(str(tmp_path / "r"), name="r", episode_lengths=[10] * 4, privileged_dim=2)
    video = write_converted_dataset(str(tmp_path / "v"), name="v", kind="video", episode_lengths=[30])
    c = _config(f"{robot},{video}", batch=8)
    unread = next(loader.make_iterator(c))  # model.privileged_dim=0: ignored (one masked column)
    assert unread["privileged"].shape == (8, 4, 1) and not unread["privileged_mask"].any()
    c.model.privileged_dim = 3
    batch = next(loader.make_iterator(c))
    assert batch["privileged"].shape == batch["privileged_mask"].shape == (8, 4, 3)
    for i in range(8):
        if batch["source_id"][i] == 1:  # video: no state recorded
            assert not batch["privileged_mask"][i].any() and not batch["privileged"][i].any()
            continue
        assert batch["privileged_mask"][i, :, :2].all() and not batch["privileged_mask"][i, :, 2].any()
        # (t, -e) normalized as proprio's (t, e): the same frames, no padding dim filled
        np.testing.assert_allclose(batch["privileged"][i, :, :2], batch["proprio"][i, :, :2] * [1, -1])
        assert not batch["privileged"][i, :, 2].any()
    c.model.privileged_dim = 1
    with pytest.raises(ValueError, match=r"privileged_dim is 2 but config.model.privileged_dim is 1"):
        loader.make_iterator(c)
    c.model.privileged_dim, c.loss.privileged, c.data.mixture = 3, 1.0, video  # nothing to read out
    with pytest.raises(ValueError, match=r"config.loss.privileged reads out a privileged state, but no dataset"):
        loader.make_iterator(c)
    held_out = next(loader.make_iterator(c, split="eval", data=video))  # evaluating such a model on it is fine
    assert held_out["privileged"].shape == (8, 4, 3) and not held_out["privileged_mask"].any()
